package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// overloadChildEnv, set to "KIND,CPU,WORK", makes this binary (the bench, or
// its test binary: see TestMain) the isolated overload scenario's server:
// pinned to CPU with GOMAXPROCS 1, it serves KIND's side doing WORK
// (overloadWork.name), prints
// "addr ADDR", answers each line on stdin with
// "stats BUSY WORKS INFLIGHT LIMIT SHED_DEADLINE SHED_LIMIT SHED_INFLIGHT SHED_TOTAL IN_TIME CPU" and stops when stdin closes.
const overloadChildEnv = "GRPCREUSE_BENCH_OVERLOAD_SERVER"

// isolatedCPUs picks the callers' CPU and the server's for the isolated
// mode (the first two this process may use), or says why there are none.
func isolatedCPUs() (client, server int, whyNot string) {
	l := cpuList()
	if len(l) < 2 {
		return 0, 0, fmt.Sprintf("needs 2 CPUs to pin to, this process may use %d", len(l))
	}
	if _, err := os.Executable(); err != nil {
		return 0, 0, "cannot re-execute the bench: " + err.Error()
	}
	return l[0], l[1], ""
}

// overloadChild is the child's main; it returns the exit code.
func overloadChild(spec string) int {
	f := strings.Split(spec, ",")
	w, known := map[string]overloadWork{timerWork.name: timerWork, cpuWork.name: cpuWork}[f[len(f)-1]]
	if len(f) != 3 || !known {
		fmt.Fprintf(os.Stderr, "bench: %s=%q: want KIND,CPU,WORK (WORK %s or %s)\n", overloadChildEnv, spec, timerWork.name, cpuWork.name)
		return 2
	}
	kind := f[0]
	cpu, err := strconv.Atoi(f[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %s=%q: CPU %q is not a number\n", overloadChildEnv, spec, f[1])
		return 2
	}
	runtime.GOMAXPROCS(1)
	if _, err := pinProcess(cpu); err != nil {
		fmt.Fprintln(os.Stderr, "bench: overload server:", err)
		return 1
	}
	s, err := startLocalServer(kind, w, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench: overload server:", err)
		return 1
	}
	defer s.stop()
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "addr %s\n", s.addr())
	if err := out.Flush(); err != nil {
		return 1
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		st, _ := s.stats()
		fmt.Fprintf(out, "stats %d %d %d %d %d %d %d %d %d %d\n", st.busy, st.works, st.inFlight, st.limit, st.shedDeadline, st.shedLimit, st.shedInFlight, st.shedTotal,
			st.inTime, st.cpu)
		if err := out.Flush(); err != nil {
			return 1
		}
	}
	return 0
}

// childServer is an overload server in a child process.
type childServer struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stdout  io.ReadCloser
	lines   *bufio.Scanner
	address string
}

// startChildServer re-executes this binary as kind's server doing w's
// work, pinned to cpu.
func startChildServer(kind string, w overloadWork, cpu int) (*childServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), overloadChildEnv+"="+kind+","+strconv.Itoa(cpu)+","+w.name, "GOMAXPROCS=1")
	cmd.Stderr = os.Stderr
	c := &childServer{cmd: cmd}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if c.stdout, err = cmd.StdoutPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c.lines = bufio.NewScanner(c.stdout)
	if c.address, err = c.read("addr"); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *childServer) read(prefix string) (string, error) {
	if !c.lines.Scan() {
		return "", fmt.Errorf("overload server (child): no %q line: %v", prefix, c.lines.Err())
	}
	v, ok := strings.CutPrefix(c.lines.Text(), prefix+" ")
	if !ok {
		return "", fmt.Errorf("overload server (child): got %q, want a %q line", c.lines.Text(), prefix)
	}
	return v, nil
}

func (c *childServer) addr() string { return c.address }

func (c *childServer) stats() (overloadStats, error) {
	if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
		return overloadStats{}, err
	}
	v, err := c.read("stats")
	if err != nil {
		return overloadStats{}, err
	}
	var n [10]int64
	f := strings.Fields(v)
	if len(f) != len(n) {
		return overloadStats{}, fmt.Errorf("overload server (child): bad stats line %q", v)
	}
	for i := range n {
		if n[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return overloadStats{}, fmt.Errorf("overload server (child): bad stats line %q", v)
		}
	}
	return overloadStats{busy: n[0], works: n[1], inFlight: n[2], limit: n[3], shedDeadline: n[4], shedLimit: n[5],
		shedInFlight: n[6], shedTotal: n[7], inTime: n[8], cpu: n[9]}, nil
}

// stop closes the child's stdin (it stops its server and exits) and waits
// for it, killing it if it has not exited within 10 s.
func (c *childServer) stop() {
	c.stdin.Close()
	exited := make(chan error, 1)
	go func() {
		_, _ = io.Copy(io.Discard, c.stdout)
		exited <- c.cmd.Wait()
	}()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-exited
	}
}
