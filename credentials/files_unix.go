//go:build unix

package credentials

import "syscall"

// openNonBlock keeps open(2) from waiting for a writer when a reloaded
// file is a FIFO; it has no effect on regular files.
const openNonBlock = syscall.O_NONBLOCK
