package vwire

import (
	"strings"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestNames(t *testing.T) {
	for _, id := range []string{"a", "conn-1", strings.Repeat("x", 300), "with/slash and space"} {
		for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			h := HostIfName("fwd", id, side)
			if len(h) != 15 || forwarder.ValidateIfName(h) != nil {
				t.Errorf("HostIfName(%q, %s) = %q", id, side, h)
			}
			d := DefaultIfName("fwd", id, side)
			if len(d) != 12 || forwarder.ValidateIfName(d) != nil {
				t.Errorf("DefaultIfName(%q, %s) = %q", id, side, d)
			}
			gotID, gotSide, ok := ParseAlias("fwd", LinkAlias("fwd", id, side))
			if !ok || gotID != id || gotSide != side {
				t.Errorf("ParseAlias(LinkAlias(%q, %s)) = %q, %s, %v", id, side, gotID, gotSide, ok)
			}
		}
	}
	if HostIfName("a", "x", forwarder.SideClient) == HostIfName("b", "x", forwarder.SideClient) {
		t.Error("host names do not depend on the forwarder name")
	}
	if !strings.HasPrefix(HostIfName("a", "x", forwarder.SideClient), "nfc") || !strings.HasPrefix(HostIfName("a", "x", forwarder.SideEndpoint), "nfe") {
		t.Error("host name prefixes")
	}
	for _, alias := range []string{"", "nsmfwd/other/x/client", "nsmfwd/fwd/x/middle", "nsmfwd/fwd//client", "nsmfwd/fwd/client"} {
		if _, _, ok := ParseAlias("fwd", alias); ok {
			t.Errorf("ParseAlias(%q) accepted", alias)
		}
	}
}
