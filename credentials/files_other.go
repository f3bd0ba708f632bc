//go:build !unix

package credentials

// openNonBlock is 0 where open(2) has no non-blocking flag; the read
// timeout still bounds a reading.
const openNonBlock = 0
