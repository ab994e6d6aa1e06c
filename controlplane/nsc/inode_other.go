//go:build !unix

package nsc

import (
	"fmt"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// InodeURL returns the inode://DEV/INO URL of the namespace file at path.
// Namespaces exist only on Linux.
func InodeURL(path string) (string, error) {
	return "", fmt.Errorf("inode URL %q: %w", path, forwarder.ErrNotSupported)
}
