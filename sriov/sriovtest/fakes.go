package sriovtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/nsmfwd/nsmfwd/sriov"
)

// PFLink is a recording fake of sriov.PFLink: it holds every VF's
// settings, logs each change as a line of text and calls OnSet after it.
type PFLink struct {
	mu   sync.Mutex
	vfs  map[string]sriov.VFSettings
	ops  []string
	fail map[string]func(sriov.VFSettings) error
	// OnSet, when set, sees each applied change (the fake switch uses it).
	OnSet func(pf string, vf int, s sriov.VFSettings)
}

var _ sriov.PFLink = (*PFLink)(nil)

func key(pf string, vf int) string { return fmt.Sprintf("%s/%d", pf, vf) }

// NewPFLink returns a fake whose VFs 0..n-1 of pf start with Original(i).
func NewPFLink(pf string, n int) *PFLink {
	f := &PFLink{vfs: map[string]sriov.VFSettings{}, fail: map[string]func(sriov.VFSettings) error{}}
	for i := range n {
		f.vfs[key(pf, i)] = Original(i)
	}
	return f
}

// Original is the state the fake gives VF i at start: every field away
// from its default, so a test sees any field that was not restored.
func Original(i int) sriov.VFSettings {
	return sriov.VFSettings{
		MAC: fmt.Sprintf("aa:bb:cc:00:00:%02x", i), VLAN: 3000 + i, QoS: 2, Trust: true, SpoofChk: false,
		MinTxRate: 10, MaxTxRate: 1000, LinkState: sriov.VFLinkStateEnable,
	}
}

// VF implements sriov.PFLink.
func (f *PFLink) VF(_ context.Context, pf string, vf int) (sriov.VFSettings, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.vfs[key(pf, vf)]
	if !ok {
		return sriov.VFSettings{}, fmt.Errorf("fake pf %s: no VF %d", pf, vf)
	}
	return s, nil
}

// SetVF implements sriov.PFLink.
func (f *PFLink) SetVF(_ context.Context, pf string, vf int, s sriov.VFSettings) error {
	f.mu.Lock()
	k := key(pf, vf)
	var unsupported error
	if fail := f.fail[k]; fail != nil {
		if err := fail(s); err != nil {
			// An *UnsupportedError means the rest was set: like a real
			// PF, the fake sets every field but the link state.
			if _, ok := err.(*sriov.UnsupportedError); !ok { //nolint:errorlint // the fake's own contract: a bare UnsupportedError
				f.mu.Unlock()
				return err
			}
			unsupported = err
		}
	}
	cur, ok := f.vfs[k]
	if !ok {
		f.mu.Unlock()
		return fmt.Errorf("fake pf %s: no VF %d", pf, vf)
	}
	if unsupported != nil {
		s.LinkState = cur.LinkState
	}
	f.vfs[k] = s
	f.ops = append(f.ops, fmt.Sprintf("set %s %s", k, s))
	hook := f.OnSet
	f.mu.Unlock()
	if hook != nil {
		hook(pf, vf, s)
	}
	return unsupported
}

// FailSet makes SetVF of one VF fail with what fail returns for the
// settings asked for (nil fail clears it), as a PF refusing a value would.
// When fail returns an *sriov.UnsupportedError, every field but the link
// state is set anyway, as NetlinkPF does for a driver without link state.
func (f *PFLink) FailSet(pf string, vf int, fail func(sriov.VFSettings) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[key(pf, vf)] = fail
}

// Ops returns the changes made so far, one line each.
func (f *PFLink) Ops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}

// Changed lists the VFs whose settings differ from Original, as
// "pf/vf: settings".
func (f *PFLink) Changed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, s := range f.vfs {
		var i int
		_, _ = fmt.Sscanf(k[strings.LastIndexByte(k, '/')+1:], "%d", &i)
		if s != Original(i) {
			out = append(out, k+": "+s.String())
		}
	}
	slices.Sort(out)
	return out
}

// PCI fakes what the kernel does on driver_override, unbind and
// drivers_probe writes by moving the driver links of a fake sysfs tree.
type PCI struct {
	Root string
	// Native is the driver a device binds to without an override.
	Native map[string]string
	mu     sync.Mutex
	ops    []string
}

var _ sriov.PCIDriver = (*PCI)(nil)

func (p *PCI) dev(pci string, parts ...string) string {
	return filepath.Join(append([]string{p.Root, "bus", "pci", "devices", pci}, parts...)...)
}

func (p *PCI) log(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ops = append(p.ops, fmt.Sprintf(format, args...))
}

// Ops returns the operations so far, one line each.
func (p *PCI) Ops() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ops)
}

// SetDriverOverride implements sriov.PCIDriver.
func (p *PCI) SetDriverOverride(pci, driver string) error {
	p.log("driver_override %s %q", pci, driver)
	v := driver
	if v == "" {
		v = "(null)"
	}
	return os.WriteFile(p.dev(pci, "driver_override"), []byte(v+"\n"), 0o600)
}

// Unbind implements sriov.PCIDriver.
func (p *PCI) Unbind(pci string) error {
	p.log("unbind %s", pci)
	err := os.Remove(p.dev(pci, "driver"))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

// Probe implements sriov.PCIDriver.
func (p *PCI) Probe(pci string) error {
	p.log("probe %s", pci)
	if _, err := os.Lstat(p.dev(pci, "driver")); err == nil {
		return nil // already bound
	}
	b, err := os.ReadFile(p.dev(pci, "driver_override"))
	if err != nil {
		return err
	}
	drv := strings.TrimSpace(string(b))
	if drv == "(null)" || drv == "" {
		drv = p.Native[pci]
	}
	if drv == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(p.Root, "bus", "pci", "drivers", drv), 0o750); err != nil {
		return err
	}
	return os.Symlink("../../../bus/pci/drivers/"+drv, p.dev(pci, "driver"))
}

// Cgroups is a recording fake of sriov.DeviceCgroups.
type Cgroups struct {
	mu      sync.Mutex
	granted map[string][]sriov.Device
}

var _ sriov.DeviceCgroups = (*Cgroups)(nil)

// Allow implements sriov.DeviceCgroups.
func (c *Cgroups) Allow(_ context.Context, dir string, all []sriov.Device) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.granted == nil {
		c.granted = map[string][]sriov.Device{}
	}
	c.granted[dir] = slices.Clone(all)
	return nil
}

// Revoke implements sriov.DeviceCgroups.
func (c *Cgroups) Revoke(_ context.Context, dir string, _, remaining []sriov.Device) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(remaining) == 0 {
		delete(c.granted, dir)
	} else {
		c.granted[dir] = slices.Clone(remaining)
	}
	return nil
}

// Granted returns the devices cgroup dir may open.
func (c *Cgroups) Granted(dir string) []sriov.Device {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.granted[dir])
}
