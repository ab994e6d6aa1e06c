package vppapi

import (
	"strings"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// maxTag is the longest interface tag VPP stores (string[64]).
const maxTag = 63

// tagPrefix starts the tag of every VPP interface a forwarder name owns:
// "nsmfwd/<name>/", or "nsmfwd/#<hash>/" for a long name.
func tagPrefix(name string) string {
	if len(name) <= 24 {
		return "nsmfwd/" + name + "/"
	}
	return "nsmfwd/#" + vwire.ConnHash(name, "")[:12] + "/"
}

// ifTag is the tag of one side's VPP interface: the prefix, the connection
// id (or "#" and a hash of it when it does not fit) and "c" or "e".
func ifTag(name, id string, side forwarder.SideKind) string {
	s := "/c"
	if side == forwarder.SideEndpoint {
		s = "/e"
	}
	p := tagPrefix(name)
	if len(p)+len(id)+len(s) > maxTag || strings.ContainsAny(id, "#\x00") {
		id = "#" + vwire.ConnHash(name, id)[:20]
	}
	return p + id + s
}
