package sriov

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v2"
)

// Uses a VF range can be configured for.
const (
	// UseKernel VFs keep their netdev driver; the netdev is moved into the
	// client's (or endpoint's) network namespace (KERNEL mechanism).
	UseKernel = "kernel"
	// UseVFIO VFs are bound to vfio-pci and their /dev/vfio group is handed
	// to the client (VFIO mechanism, DPDK clients).
	UseVFIO = "vfio"
)

// DriverVFIO is the kernel driver VFIO VFs are bound to.
const DriverVFIO = "vfio-pci"

// Config is the node's SR-IOV configuration (deployments/k8s/overlays/sriov/
// sriov-config.yaml documents each field with an example).
type Config struct {
	// Version of the format; 1.
	Version int `yaml:"version"`
	// DefaultToken is the pool ("<serviceDomain>/<capability>") used when a
	// request names none. Empty: a request must name its pool.
	DefaultToken string `yaml:"defaultToken,omitempty"`
	// PhysicalFunctions lists the PFs the forwarder may take VFs from.
	PhysicalFunctions []PFConfig `yaml:"physicalFunctions"`
}

// PFConfig is one physical function.
type PFConfig struct {
	// PCIAddress is the PF's PCI address (DDDD:BB:DD.F, lower-case hex).
	// Either it or Name is set.
	PCIAddress string `yaml:"pciAddress,omitempty"`
	// Name is the PF's netdev name, resolved to a PCI address at start.
	Name string `yaml:"name,omitempty"`
	// PFDriver is the PF's kernel driver; it is checked, never changed.
	PFDriver string `yaml:"pfDriver"`
	// Capabilities are tags a client asks for in its token.
	Capabilities []string `yaml:"capabilities,omitempty"`
	// ServiceDomains are the networks this PF is cabled to.
	ServiceDomains []string `yaml:"serviceDomains"`
	// VLANs is the range ("FIRST-LAST") of VLAN ids given, one per
	// connection, to the client's and the endpoint's VF so the NIC's
	// embedded switch joins exactly those two. Empty: VLAN 0 (the switch
	// joins VFs by MAC only; no isolation between connections).
	VLANs string `yaml:"vlans,omitempty"`
	// VFs are the VF index ranges, each with its use and driver.
	VFs []VFRange `yaml:"vfs"`
}

// VFRange is an inclusive range of VF indexes with one use.
type VFRange struct {
	// Range is "N" or "FIRST-LAST".
	Range string `yaml:"range"`
	// Use is UseKernel or UseVFIO.
	Use string `yaml:"use"`
	// Driver is the VF driver for that use (iavf, mlx5_core; vfio-pci for
	// UseVFIO). A kernel VF bound to another driver is not used.
	Driver string `yaml:"driver"`
}

var (
	pciAddressRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)
	tokenPartRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
)

// LoadConfig reads and parses the YAML file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path) //nolint:gosec // G304: the operator's config file (NSM_SRIOV_CONFIG_FILE)
	if err != nil {
		return nil, fmt.Errorf("sriov config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("sriov config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes YAML strictly (unknown or duplicate fields are
// errors) and validates it.
func ParseConfig(data []byte) (*Config, error) {
	var cfg Config
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// Validate checks the config without touching the node.
func (c *Config) Validate() error {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if c.Version != 1 {
		fail("version %d: want 1", c.Version)
	}
	if len(c.PhysicalFunctions) == 0 {
		fail("no physicalFunctions")
	}
	seen := map[string]bool{}
	for i, pf := range c.PhysicalFunctions {
		id := pf.ID()
		switch {
		case pf.PCIAddress == "" && pf.Name == "":
			fail("physicalFunctions[%d]: neither pciAddress nor name", i)
		case pf.PCIAddress != "" && pf.Name != "":
			fail("physicalFunctions[%d]: both pciAddress and name; give one", i)
		case pf.PCIAddress != "" && !pciAddressRE.MatchString(pf.PCIAddress):
			fail("pciAddress %q: want DDDD:BB:DD.F in lower-case hex", pf.PCIAddress)
		case seen[id]:
			fail("physical function %s listed twice", id)
		}
		seen[id] = true
		if pf.PFDriver == "" || pf.PFDriver == DriverVFIO {
			fail("%s: pfDriver %q: want the PF's kernel netdev driver", id, pf.PFDriver)
		}
		if len(pf.ServiceDomains) == 0 {
			fail("%s: no serviceDomains: no connection could use it", id)
		}
		for _, s := range append(slices.Clone(pf.ServiceDomains), pf.Capabilities...) {
			if !tokenPartRE.MatchString(s) {
				fail("%s: service domain or capability %q: want [A-Za-z0-9_.-], no '/'", id, s)
			}
		}
		if pf.VLANs != "" {
			if first, last, err := parseRange(pf.VLANs, 4094); err != nil || first < 1 {
				fail("%s: vlans %q: want FIRST-LAST within 1-4094", id, pf.VLANs)
			} else {
				_ = last
			}
		}
		if len(pf.VFs) == 0 {
			fail("%s: no vfs", id)
		}
		used := map[int]bool{}
		for _, r := range pf.VFs {
			first, last, err := parseRange(r.Range, 255)
			if err != nil {
				fail("%s: VF %v", id, err)
				continue
			}
			for i := first; i <= last; i++ {
				if used[i] {
					fail("%s: VF %d in more than one range", id, i)
				}
				used[i] = true
			}
			switch r.Use {
			case UseKernel:
				if r.Driver == "" || r.Driver == DriverVFIO {
					fail("%s VFs %s: use kernel needs a netdev driver, not %q", id, r.Range, r.Driver)
				}
			case UseVFIO:
				if r.Driver != DriverVFIO {
					fail("%s VFs %s: use vfio needs driver vfio-pci, not %q", id, r.Range, r.Driver)
				}
			default:
				fail("%s VFs %s: use %q: want kernel or vfio", id, r.Range, r.Use)
			}
		}
	}
	if c.DefaultToken != "" {
		if _, _, err := ParseToken(c.DefaultToken); err != nil {
			fail("defaultToken: %v", err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// ID names the PF in messages and metrics: its PCI address, or its netdev
// name before resolution.
func (pf PFConfig) ID() string {
	if pf.PCIAddress != "" {
		return pf.PCIAddress
	}
	return pf.Name
}

// Count is how many VFs the range holds.
func (r VFRange) Count() (int, error) {
	first, last, err := parseRange(r.Range, 255)
	if err != nil {
		return 0, err
	}
	return last - first + 1, nil
}

// parseRange parses "N" or "FIRST-LAST" (inclusive) within 0..max.
func parseRange(s string, maxValue int) (first, last int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if first, err = strconv.Atoi(a); err != nil {
		return 0, 0, fmt.Errorf("range %q: %w", s, err)
	}
	last = first
	if isRange {
		if last, err = strconv.Atoi(b); err != nil {
			return 0, 0, fmt.Errorf("range %q: %w", s, err)
		}
	}
	if first < 0 || last < first || last > maxValue {
		return 0, 0, fmt.Errorf("range %q: want 0 <= first <= last <= %d", s, maxValue)
	}
	return first, last, nil
}

// ParseToken splits NSM's sriovToken, "<serviceDomain>/<capability>".
func ParseToken(token string) (serviceDomain, capability string, err error) {
	d, c, ok := strings.Cut(token, "/")
	if !ok || !tokenPartRE.MatchString(d) || !tokenPartRE.MatchString(c) {
		return "", "", fmt.Errorf("token %q: want <serviceDomain>/<capability>", token)
	}
	return d, c, nil
}
