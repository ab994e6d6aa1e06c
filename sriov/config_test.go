package sriov

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestShippedConfig decodes the example the sriov overlay ships.
func TestShippedConfig(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("..", "deployments", "k8s", "overlays", "sriov", "sriov-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.PhysicalFunctions) != 2 || cfg.PhysicalFunctions[1].Name != "ens2f1" || cfg.DefaultToken == "" {
		t.Fatalf("unexpected config: %+v", cfg)
	}
}

func TestConfigRejects(t *testing.T) {
	const good = `
version: 1
physicalFunctions:
  - pciAddress: "0000:3b:00.0"
    pfDriver: ice
    capabilities: [10G]
    serviceDomains: [a]
    vlans: "100-199"
    vfs:
      - {range: "0-3", use: kernel, driver: iavf}
      - {range: "4", use: vfio, driver: vfio-pci}
`
	if _, err := ParseConfig([]byte(good)); err != nil {
		t.Fatalf("good config rejected: %v", err)
	}
	for name, bad := range map[string][2]string{
		"unknown field":     {"pfDriver: ice", "pfDriver: ice\n    vfDriver: iavf"},
		"duplicate field":   {"pfDriver: ice", "pfDriver: ice\n    pfDriver: ice"},
		"overlap":           {`range: "4"`, `range: "3"`},
		"vfio driver":       {"driver: vfio-pci", "driver: iavf"},
		"kernel driver":     {"driver: iavf", "driver: vfio-pci"},
		"bad pci":           {"0000:3b:00.0", "3b:00.0"},
		"pci and name":      {`pciAddress: "0000:3b:00.0"`, "pciAddress: \"0000:3b:00.0\"\n    name: ens1f0"},
		"no pf id":          {`pciAddress: "0000:3b:00.0"`, ""},
		"bad use":           {"use: kernel", "use: netdev"},
		"bad range":         {`range: "0-3"`, `range: "3-0"`},
		"vlan zero":         {`vlans: "100-199"`, `vlans: "0-10"`},
		"vlan too big":      {`vlans: "100-199"`, `vlans: "100-5000"`},
		"slash in domain":   {"serviceDomains: [a]", "serviceDomains: [a/b]"},
		"bad default token": {"version: 1", "version: 1\ndefaultToken: nodomain"},
		"version":           {"version: 1", "version: 2"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseConfig([]byte(strings.Replace(good, bad[0], bad[1], 1))); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(p); err != nil {
		t.Fatal(err)
	}
}

func TestParseToken(t *testing.T) {
	d, c, err := ParseToken("sriov-a.example/25G")
	if err != nil || d != "sriov-a.example" || c != "25G" {
		t.Fatalf("got %q %q %v", d, c, err)
	}
	for _, bad := range []string{"", "a", "/b", "a/", "a/b/c"} {
		if _, _, err := ParseToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
