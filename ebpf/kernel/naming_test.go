package kernel

import (
	"crypto/rand"
	"encoding/binary"
	"strings"
	"testing"
)

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
