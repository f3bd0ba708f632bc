//go:build !linux

package main

import "errors"

// pinProcess needs sched_setaffinity (Linux); elsewhere the isolated
// overload mode is skipped.
func pinProcess(int) (func(), error) { return nil, errors.New("pinning to a CPU needs Linux") }

func cpuList() []int { return nil }
