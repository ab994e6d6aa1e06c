//go:build unix

package nsc

import (
	"fmt"
	"os"
	"syscall"
)

// InodeURL returns the inode://DEV/INO URL of the namespace file at path,
// the form NSM's grpcfd passes (decimal device and inode numbers).
func InodeURL(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("inode URL: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("inode URL %q: no device and inode", path)
	}
	return fmt.Sprintf("inode://%d/%d", uint64(st.Dev), uint64(st.Ino)), nil
}
