package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// WriteFileAtomic replaces path with data the way a mounted Kubernetes
// secret changes: the new contents are written to a temporary file in the
// same directory and renamed over path, so a reader sees either the old or
// the new file, never a half-written one.
func WriteFileAtomic(tb testing.TB, path string, data []byte) {
	tb.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		tb.Fatalf("testutil: create temp file for %s: %v", path, err)
	}
	tmp := f.Name()
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		tb.Fatalf("testutil: write %s: %v", tmp, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		tb.Fatalf("testutil: close %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		tb.Fatalf("testutil: rename %s to %s: %v", tmp, path, err)
	}
}
