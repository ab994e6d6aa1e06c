package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadDeviceSelector(t *testing.T) {
	write := func(s string) string {
		p := filepath.Join(t.TempDir(), "sel.yaml")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// cmd-forwarder-vpp's format, as deployments-k8s's remote-VLAN example writes it.
	got, err := loadDeviceSelector(write("---\ninterfaces:\n  - name: eth1\n    matches:\n       - labelSelector:\n          - via: gw1\n          - via: gw2\n  - name: eth2\n    matches:\n      - labelSelector:\n          - via: gw3\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got["gw1"] != "eth1" || got["gw2"] != "eth1" || got["gw3"] != "eth2" {
		t.Fatalf("got %v", got)
	}
	if got, err := loadDeviceSelector(""); err != nil || len(got) != 0 {
		t.Fatalf("no file: %v, %v", got, err)
	}
	for _, bad := range []struct{ yaml, want string }{
		{"interfaces:\n  - matches:\n      - labelSelector:\n          - via: gw1\n", "without a name"},
		{"interfaces:\n  - name: eth1\n    matches:\n      - labelSelector:\n          - zone: a\n", "only via"},
		{"interfaces:\n  - name: eth1\n    matches:\n      - labelSelector:\n          - via: a\n  - name: eth2\n    matches:\n      - labelSelector:\n          - via: a\n", "selects both"},
		{"interface:\n  - name: eth1\n", "not found"},
	} {
		if _, err := loadDeviceSelector(write(bad.yaml)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error with %q", bad.yaml, err, bad.want)
		}
	}
	if _, err := loadDeviceSelector(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file accepted")
	}
}
