package kernel

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestNames(t *testing.T) {
	for _, id := range []string{"a", "conn-1", strings.Repeat("x", 300), "with/slash and space"} {
		for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			h := hostIfName("fwd", id, side)
			if len(h) != 15 || forwarder.ValidateIfName(h) != nil {
				t.Errorf("hostIfName(%q, %s) = %q", id, side, h)
			}
			d := defaultIfName("fwd", id, side)
			if len(d) != 12 || forwarder.ValidateIfName(d) != nil {
				t.Errorf("defaultIfName(%q, %s) = %q", id, side, d)
			}
			gotID, gotSide, ok := parseAlias("fwd", linkAlias("fwd", id, side))
			if !ok || gotID != id || gotSide != side {
				t.Errorf("parseAlias(linkAlias(%q, %s)) = %q, %s, %v", id, side, gotID, gotSide, ok)
			}
		}
	}
	if hostIfName("a", "x", forwarder.SideClient) == hostIfName("b", "x", forwarder.SideClient) {
		t.Error("host names do not depend on the forwarder name")
	}
	if !strings.HasPrefix(hostIfName("a", "x", forwarder.SideClient), "nfc") || !strings.HasPrefix(hostIfName("a", "x", forwarder.SideEndpoint), "nfe") {
		t.Error("host name prefixes")
	}
	for _, alias := range []string{"", "nsmfwd/other/x/client", "nsmfwd/fwd/x/middle", "nsmfwd/fwd//client", "nsmfwd/fwd/client"} {
		if _, _, ok := parseAlias("fwd", alias); ok {
			t.Errorf("parseAlias(%q) accepted", alias)
		}
	}
}

func TestPinDirName(t *testing.T) {
	for id, want := range map[string]string{
		"conn-1_A":               "conn-1_A",
		strings.Repeat("a", 128): strings.Repeat("a", 128),
	} {
		if got := pinDirName(id); got != want {
			t.Errorf("pinDirName(%q) = %q, want %q", id, got, want)
		}
	}
	for _, id := range []string{"", "..", "a/b", "a.b", strings.Repeat("a", 129)} {
		got := pinDirName(id)
		if !strings.HasPrefix(got, "h-") || len(got) != 18 {
			t.Errorf("pinDirName(%q) = %q, want h-<16 hex>", id, got)
		}
	}
	if got := connPinDir("/sys/fs/bpf/nsmfwd", "fwd", "c1"); got != "/sys/fs/bpf/nsmfwd/fwd/c1" {
		t.Errorf("connPinDir = %q", got)
	}
}

// Two deleters (two forwarders sharing a namespace) must not use the same
// link groups, or one's batch delete would remove the other's links.
func TestDeleterGroupsDifferAcrossInstances(t *testing.T) {
	seen := map[uint32]int{}
	for i := range 8 {
		var salt [2]byte
		_, _ = rand.Read(salt[:])
		d := &deleter{salt: uint32(binary.BigEndian.Uint16(salt[:]))}
		for range 4 {
			g := d.nextGroupLocked()
			if g&0xff000000 != groupBase {
				t.Fatalf("group %#x lost its marker", g)
			}
			if prev, ok := seen[g]; ok && prev != i {
				t.Fatalf("group %#x used by deleters %d and %d", g, prev, i)
			}
			seen[g] = i
		}
	}
}
