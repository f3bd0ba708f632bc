package interceptors_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// child is a server half run in a child process (this test binary again,
// its test picked by -test.run), so that what it measures, its CPU
// above all, is its own: it answers on stdout with "NAME VALUE" lines and
// stops when its stdin closes.
type child struct {
	tb    testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

// startChild starts name args with env added to this process's
// environment; stop it with close.
func startChild(tb testing.TB, env string, name string, args ...string) *child {
	tb.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	return &child{tb: tb, cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)}
}

// read returns the value of the child's next "name VALUE" line, skipping
// the lines before it.
func (c *child) read(name string) string {
	c.tb.Helper()
	for c.lines.Scan() {
		if v, ok := strings.CutPrefix(c.lines.Text(), name+" "); ok {
			return v
		}
	}
	c.tb.Fatalf("child: no %q line", name)
	return ""
}

// ask sends the child the line name and returns the value of its answer,
// the next "name VALUE" line.
func (c *child) ask(name string) string {
	c.tb.Helper()
	fmt.Fprintln(c.stdin, name)
	return c.read(name)
}

// close closes the child's stdin, which stops it, and waits for it,
// reading what it still writes.
func (c *child) close() {
	c.stdin.Close()
	for c.lines.Scan() {
	}
	_ = c.cmd.Wait()
}
