package token_test

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/token"
)

func testConfig() *sriov.Config {
	return &sriov.Config{
		Version: 1,
		PhysicalFunctions: []sriov.PFConfig{
			{PCIAddress: "0000:3b:00.0", PFDriver: "ice", Capabilities: []string{"10G", "intel"}, ServiceDomains: []string{"worker.domain"},
				VFs: []sriov.VFRange{{Range: "0-3", Use: sriov.UseKernel, Driver: "iavf"}, {Range: "4-5", Use: sriov.UseVFIO, Driver: sriov.DriverVFIO}}},
			{PCIAddress: "0000:3b:00.1", PFDriver: "ice", Capabilities: []string{"10G"}, ServiceDomains: []string{"worker.domain", "other.domain"},
				VFs: []sriov.VFRange{{Range: "2", Use: sriov.UseKernel, Driver: "iavf"}}},
		},
	}
}

func TestCounts(t *testing.T) {
	got, err := token.Counts(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"worker.domain/10G": 7, "worker.domain/intel": 6, "other.domain/10G": 1}
	if !maps.Equal(got, want) {
		t.Fatalf("counts %v, want %v", got, want)
	}
	if _, err := token.Counts(&sriov.Config{Version: 2}); err == nil {
		t.Fatal("invalid config accepted")
	}
}

// TestPoolPersists: a second pool on the same directory (a restarted
// forwarder) has the IDs of the first, which pods hold in their env.
func TestPoolPersists(t *testing.T) {
	dir := t.TempDir()
	counts, err := token.Counts(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	p1, err := token.Open(dir, counts)
	if err != nil {
		t.Fatal(err)
	}
	if names := p1.Names(); !slices.Equal(names, []string{"other.domain/10G", "worker.domain/10G", "worker.domain/intel"}) {
		t.Fatalf("names %v", names)
	}
	seen := map[string]bool{}
	for name, n := range counts {
		ids := p1.IDs(name)
		if len(ids) != n {
			t.Fatalf("%s: %d ids, want %d", name, len(ids), n)
		}
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("id %s issued twice", id)
			}
			seen[id] = true
			if got, err := p1.Resolve(id); err != nil || got != name {
				t.Fatalf("Resolve(%s) = %q, %v; want %q", id, got, err, name)
			}
		}
	}
	if _, err := p1.Resolve("no-such-id"); !errors.Is(err, token.ErrUnknown) {
		t.Fatalf("unknown id: %v", err)
	}
	st, err := os.Stat(filepath.Join(dir, token.FileName))
	if err != nil {
		t.Fatal(err)
	}

	p2, err := token.Open(dir, counts)
	if err != nil {
		t.Fatal(err)
	}
	for name := range counts {
		if !slices.Equal(p1.IDs(name), p2.IDs(name)) {
			t.Fatalf("%s: ids %v after reopening, were %v", name, p2.IDs(name), p1.IDs(name))
		}
	}
	if st2, _ := os.Stat(filepath.Join(dir, token.FileName)); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("unchanged pool rewritten")
	}

	// The config changes: a name shrinks (keeps its first IDs), one grows
	// (keeps all and gets more), one goes.
	counts2 := map[string]int{"worker.domain/10G": 3, "worker.domain/intel": 8}
	p3, err := token.Open(dir, counts2)
	if err != nil {
		t.Fatal(err)
	}
	if got := p3.IDs("worker.domain/10G"); !slices.Equal(got, p1.IDs("worker.domain/10G")[:3]) {
		t.Fatalf("shrunk: %v", got)
	}
	if got := p3.IDs("worker.domain/intel"); len(got) != 8 || !slices.Equal(got[:6], p1.IDs("worker.domain/intel")) {
		t.Fatalf("grown: %v", got)
	}
	if _, err := p3.Resolve(p1.IDs("other.domain/10G")[0]); !errors.Is(err, token.ErrUnknown) {
		t.Fatalf("dropped name still resolves: %v", err)
	}
	if len(p3.Names()) != 2 {
		t.Fatalf("names %v", p3.Names())
	}
}

func TestPoolCorruptFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, token.FileName), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := token.Open(dir, map[string]int{"a/b": 1}); err == nil {
		t.Fatal("corrupt file accepted")
	}
}

func TestToEnv(t *testing.T) {
	k, v := token.ToEnv("worker.domain/10G", []string{"a", "b"})
	if k != "NSM_SRIOV_TOKENS_worker.domain/10G" || v != "a,b" {
		t.Fatalf("%s=%s", k, v)
	}
}
