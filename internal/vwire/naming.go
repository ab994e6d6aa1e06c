package vwire

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Every name below is derived from the forwarder name and the connection id
// alone, so a restarted forwarder finds its objects again without state.

const aliasRoot = "nsmfwd/"

// ValidName is what a forwarder name must match: it appears in aliases,
// pin paths and VPP tags.
var ValidName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ConnHash is a stable hex digest of a forwarder name and connection id,
// for names too short to hold the id itself.
func ConnHash(name, id string) string {
	sum := sha256.Sum256([]byte(name + "/" + id))
	return hex.EncodeToString(sum[:])
}

// HostIfName is the host-side veth end of one side: "nfc"/"nfe" and 12 hex
// characters, 15 in all.
func HostIfName(name, id string, side forwarder.SideKind) string {
	prefix := "nfc"
	if side == forwarder.SideEndpoint {
		prefix = "nfe"
	}
	return prefix + ConnHash(name, id)[:12]
}

// DefaultIfName is the in-namespace name chosen when NSM sends none.
func DefaultIfName(name, id string, side forwarder.SideKind) string {
	prefix := "nsm-"
	if side == forwarder.SideEndpoint {
		prefix = "nse-"
	}
	return prefix + ConnHash(name, id)[:8]
}

// AliasPrefix starts the alias of every link the forwarder name owns.
func AliasPrefix(name string) string { return aliasRoot + name + "/" }

// LinkAlias is set on both ends of a side's veth pair.
func LinkAlias(name, id string, side forwarder.SideKind) string {
	return AliasPrefix(name) + id + "/" + string(side)
}

// ParseAlias returns the connection id and side of an alias that
// LinkAlias(name, ...) made.
func ParseAlias(name, alias string) (id string, side forwarder.SideKind, ok bool) {
	rest, ok := strings.CutPrefix(alias, AliasPrefix(name))
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
