package validate

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// sriovConfig mirrors the SR-IOV dataplane's node config, sriov.Config
// (deployments/k8s/overlays/sriov/sriov-config.yaml documents each field).
// This module does not import nsmfwd's, so the type is repeated here; the
// sriov package's own tests decode the same file with sriov.ParseConfig.
type sriovConfig struct {
	Version           int       `json:"version"`
	DefaultToken      string    `json:"defaultToken"`
	PhysicalFunctions []sriovPF `json:"physicalFunctions"`
}

type sriovPF struct {
	PCIAddress     string    `json:"pciAddress"`
	Name           string    `json:"name"`
	VLANs          string    `json:"vlans"`
	PFDriver       string    `json:"pfDriver"`
	Capabilities   []string  `json:"capabilities"`
	ServiceDomains []string  `json:"serviceDomains"`
	VFs            []sriovVF `json:"vfs"`
}

type sriovVF struct {
	Range  string `json:"range"`
	Use    string `json:"use"`
	Driver string `json:"driver"`
}

var pciAddress = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// parseSRIOVConfig decodes the YAML strictly and checks it.
func parseSRIOVConfig(data []byte) (*sriovConfig, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var cfg sriovConfig
	strict, err := k8sjson.UnmarshalStrict(j, &cfg, k8sjson.DisallowUnknownFields, k8sjson.DisallowDuplicateFields)
	if err != nil {
		return nil, err
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("strict: %v", strict)
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if cfg.Version != 1 {
		fail("version %d: want 1", cfg.Version)
	}
	if len(cfg.PhysicalFunctions) == 0 {
		fail("no physicalFunctions")
	}
	seen := make(map[string]bool)
	for _, pf := range cfg.PhysicalFunctions {
		p := pf.PCIAddress
		switch {
		case p == "" && pf.Name != "":
			p = pf.Name // a netdev name, resolved by nsmfwd through sysfs
		case pf.Name != "":
			fail("%s: both pciAddress and name", p)
		case !pciAddress.MatchString(p):
			fail("pciAddress %q: want DDDD:BB:DD.F in lower-case hex", p)
		case seen[p]:
			fail("pciAddress %s listed twice", p)
		}
		seen[p] = true
		if pf.PFDriver == "" || pf.PFDriver == "vfio-pci" {
			fail("%s: pfDriver %q: want the PF's kernel netdev driver", p, pf.PFDriver)
		}
		if len(pf.ServiceDomains) == 0 {
			fail("%s: no serviceDomains: no connection could use it", p)
		}
		if len(pf.VFs) == 0 {
			fail("%s: no vfs", p)
		}
		var used []int
		for _, vf := range pf.VFs {
			first, last, err := parseVFRange(vf.Range)
			if err != nil {
				fail("%s: %v", p, err)
				continue
			}
			for i := first; i <= last; i++ {
				if slices.Contains(used, i) {
					fail("%s: VF %d in more than one range", p, i)
				}
				used = append(used, i)
			}
			switch vf.Use {
			case "kernel":
				if vf.Driver == "" || vf.Driver == "vfio-pci" {
					fail("%s VFs %s: use kernel needs a netdev driver, not %q", p, vf.Range, vf.Driver)
				}
			case "vfio":
				if vf.Driver != "vfio-pci" {
					fail("%s VFs %s: use vfio needs driver vfio-pci, not %q", p, vf.Range, vf.Driver)
				}
			default:
				fail("%s VFs %s: use %q: want kernel or vfio", p, vf.Range, vf.Use)
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return &cfg, nil
}

// parseVFRange parses "N" or "FIRST-LAST" (inclusive).
func parseVFRange(s string) (first, last int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if first, err = strconv.Atoi(a); err != nil {
		return 0, 0, fmt.Errorf("VF range %q: %w", s, err)
	}
	last = first
	if isRange {
		if last, err = strconv.Atoi(b); err != nil {
			return 0, 0, fmt.Errorf("VF range %q: %w", s, err)
		}
	}
	if first < 0 || last < first || last > 255 {
		return 0, 0, fmt.Errorf("VF range %q: want 0 <= first <= last <= 255", s)
	}
	return first, last, nil
}

// TestSRIOVConfig checks the config the sriov overlay ships, as rendered
// into its ConfigMap.
func TestSRIOVConfig(t *testing.T) {
	objs, err := render(filepath.Join(repoRoot, "deployments", "k8s", "overlays", "sriov"))
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, o := range objs {
		cm, ok := o.Obj.(*corev1.ConfigMap)
		if !ok || !strings.HasPrefix(cm.Name, "nsmfwd-sriov") {
			continue
		}
		found = true
		if _, err := parseSRIOVConfig([]byte(cm.Data["config.yaml"])); err != nil {
			t.Errorf("ConfigMap %s config.yaml: %v", cm.Name, err)
		}
	}
	if !found {
		t.Fatal("sriov overlay renders no nsmfwd-sriov ConfigMap")
	}
}

func TestSRIOVConfigRejects(t *testing.T) {
	const good = `
version: 1
physicalFunctions:
  - pciAddress: "0000:3b:00.0"
    pfDriver: ice
    serviceDomains: [a]
    vfs:
      - {range: "0-3", use: kernel, driver: iavf}
      - {range: "4", use: vfio, driver: vfio-pci}
`
	if _, err := parseSRIOVConfig([]byte(good)); err != nil {
		t.Fatalf("good config rejected: %v", err)
	}
	for name, bad := range map[string][2]string{
		"unknown field": {"pfDriver: ice", "pfDriver: ice\n    vfDriver: iavf"},
		"overlap":       {`range: "4"`, `range: "3"`},
		"vfio driver":   {"driver: vfio-pci", "driver: iavf"},
		"bad pci":       {"0000:3b:00.0", "3b:00.0"},
		"bad use":       {"use: kernel", "use: netdev"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseSRIOVConfig([]byte(strings.Replace(good, bad[0], bad[1], 1))); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
