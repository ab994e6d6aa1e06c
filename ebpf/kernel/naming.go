package kernel

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Every name below is derived from the forwarder name and the connection id
// alone, so a restarted forwarder finds its objects again without state.

const aliasRoot = "nsmfwd/"

var (
	plainID   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	validName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

func connHash(name, id string) string {
	sum := sha256.Sum256([]byte(name + "/" + id))
	return hex.EncodeToString(sum[:])
}

// hostIfName is the host-side veth end of one side: "nfc"/"nfe" and 12 hex
// characters, 15 in all.
func hostIfName(name, id string, side forwarder.SideKind) string {
	prefix := "nfc"
	if side == forwarder.SideEndpoint {
		prefix = "nfe"
	}
	return prefix + connHash(name, id)[:12]
}

// defaultIfName is the in-namespace name chosen when NSM sends none.
func defaultIfName(name, id string, side forwarder.SideKind) string {
	prefix := "nsm-"
	if side == forwarder.SideEndpoint {
		prefix = "nse-"
	}
	return prefix + connHash(name, id)[:8]
}

// aliasPrefix starts the alias of every link the forwarder name owns.
func aliasPrefix(name string) string { return aliasRoot + name + "/" }

// linkAlias is set on both ends of a side's veth pair.
func linkAlias(name, id string, side forwarder.SideKind) string {
	return aliasPrefix(name) + id + "/" + string(side)
}

// parseAlias returns the connection id and side of an alias that
// linkAlias(name, ...) made.
func parseAlias(name, alias string) (id string, side forwarder.SideKind, ok bool) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix(name))
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 {
		return "", "", false
	}
	id, side = rest[:i], forwarder.SideKind(rest[i+1:])
	if side != forwarder.SideClient && side != forwarder.SideEndpoint {
		return "", "", false
	}
	return id, side, true
}

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
