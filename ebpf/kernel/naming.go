package kernel

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"regexp"
)

var plainID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// pinDirName is the connection's directory under <PinDir>/<Name>: the id
// itself when it is a safe file name, else "h-" and a hash of it.
func pinDirName(id string) string {
	if plainID.MatchString(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "h-" + hex.EncodeToString(sum[:])[:16]
}

func connPinDir(root, name, id string) string {
	return filepath.Join(root, name, pinDirName(id))
}
