package sriov

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/Mellanox/rdmamap"
)

// DefaultSysfsRoot is where sysfs is mounted unless Options say otherwise.
const DefaultSysfsRoot = "/sys"

// Sysfs reads and writes the PCI part of a sysfs tree mounted at Root. It
// holds no state: every call reads the tree, so the kernel (or a test's
// fake tree) stays the truth.
type Sysfs struct {
	// Root is the sysfs mount point: "/sys" on a node, a temporary
	// directory in tests.
	Root string
}

// PF is a physical function as sysfs shows it.
type PF struct {
	PCI      string
	Netdev   string // "" when the PF has none (or several: the first)
	Driver   string
	NumVFs   int // sriov_numvfs: VFs the operator enabled
	TotalVFs int // sriov_totalvfs: what the device supports
	VFs      []VF
}

// VF is a virtual function of a PF.
type VF struct {
	// Index is the VF number N of the PF's virtfnN link: the number the
	// PF's netlink VF settings use. It comes from the link's name, never
	// from its position in a listing (virtfn10 sorts before virtfn2).
	Index int
	PCI   string
	// IOMMUGroup is the VF's IOMMU group, -1 without one. VFs sharing a
	// group can only be handed to VFIO clients together.
	IOMMUGroup int
	Driver     string   // bound driver, "" when unbound
	Netdevs    []string // netdevs of the VF in the namespace sysfs shows
	RDMA       []string // RDMA devices of the VF
}

func (s Sysfs) root() string {
	if s.Root == "" {
		return DefaultSysfsRoot
	}
	return s.Root
}

func (s Sysfs) dev(pci string, parts ...string) string {
	return filepath.Join(append([]string{s.root(), "bus", "pci", "devices", pci}, parts...)...)
}

// linkBase returns the last element of the symlink at path's target, ""
// when there is no such link.
func linkBase(path string) (string, error) {
	t, err := os.Readlink(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Base(t), nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: a sysfs attribute under the configured root
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// PCIOfNetdev returns the PCI address of the device behind netdev name.
func (s Sysfs) PCIOfNetdev(name string) (string, error) {
	pci, err := linkBase(filepath.Join(s.root(), "class", "net", name, "device"))
	if err != nil {
		return "", fmt.Errorf("sysfs: netdev %s: %w", name, err)
	}
	if pci == "" || !pciAddressRE.MatchString(pci) {
		return "", fmt.Errorf("sysfs: netdev %s: no PCI device", name)
	}
	return pci, nil
}

// ReadPF reads a PF and its VFs.
func (s Sysfs) ReadPF(pci string) (*PF, error) {
	if _, err := os.Stat(s.dev(pci)); err != nil {
		return nil, fmt.Errorf("sysfs: PF %s: %w", pci, err)
	}
	pf := &PF{PCI: pci}
	var err error
	if pf.TotalVFs, err = readInt(s.dev(pci, "sriov_totalvfs")); err != nil {
		return nil, fmt.Errorf("sysfs: PF %s is not SR-IOV capable: %w", pci, err)
	}
	if pf.NumVFs, err = readInt(s.dev(pci, "sriov_numvfs")); err != nil {
		return nil, fmt.Errorf("sysfs: PF %s: %w", pci, err)
	}
	if pf.Driver, err = s.Driver(pci); err != nil {
		return nil, err
	}
	if nd, err := s.Netdevs(pci); err != nil {
		return nil, err
	} else if len(nd) > 0 {
		pf.Netdev = nd[0]
	}
	entries, err := os.ReadDir(s.dev(pci))
	if err != nil {
		return nil, fmt.Errorf("sysfs: PF %s: %w", pci, err)
	}
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), "virtfn")
		if !ok {
			continue
		}
		idx, err := strconv.Atoi(num)
		if err != nil || idx < 0 {
			continue
		}
		vfPCI, err := linkBase(s.dev(pci, e.Name()))
		if err != nil || vfPCI == "" {
			return nil, fmt.Errorf("sysfs: PF %s: %s: %w", pci, e.Name(), err)
		}
		vf, err := s.ReadVF(vfPCI)
		if err != nil {
			return nil, err
		}
		vf.Index = idx
		pf.VFs = append(pf.VFs, *vf)
	}
	slices.SortFunc(pf.VFs, func(a, b VF) int { return a.Index - b.Index })
	return pf, nil
}

// ReadVF reads one VF's group, driver, netdevs and RDMA devices. Its Index
// is left -1: only the PF's virtfnN links tell it.
func (s Sysfs) ReadVF(pci string) (*VF, error) {
	vf := &VF{Index: -1, PCI: pci, IOMMUGroup: -1}
	g, err := linkBase(s.dev(pci, "iommu_group"))
	if err != nil {
		return nil, fmt.Errorf("sysfs: VF %s: iommu group: %w", pci, err)
	}
	if g != "" {
		if vf.IOMMUGroup, err = strconv.Atoi(g); err != nil {
			return nil, fmt.Errorf("sysfs: VF %s: iommu group %q: %w", pci, g, err)
		}
	}
	if vf.Driver, err = s.Driver(pci); err != nil {
		return nil, err
	}
	if vf.Netdevs, err = s.Netdevs(pci); err != nil {
		return nil, err
	}
	vf.RDMA = s.RDMADevices(pci)
	return vf, nil
}

// PhysFn returns the PCI address of a VF's PF.
func (s Sysfs) PhysFn(vfPCI string) (string, error) {
	pf, err := linkBase(s.dev(vfPCI, "physfn"))
	if err != nil || pf == "" {
		return "", fmt.Errorf("sysfs: %s is not a VF: %w", vfPCI, errors.Join(err, fs.ErrNotExist))
	}
	return pf, nil
}

// Driver returns the driver bound to a PCI device, "" when none is.
func (s Sysfs) Driver(pci string) (string, error) {
	d, err := linkBase(s.dev(pci, "driver"))
	if err != nil {
		return "", fmt.Errorf("sysfs: %s driver: %w", pci, err)
	}
	return d, nil
}

// DriverOverride returns a device's driver_override ("" when unset).
func (s Sysfs) DriverOverride(pci string) (string, error) {
	b, err := os.ReadFile(s.dev(pci, "driver_override"))
	if err != nil {
		return "", fmt.Errorf("sysfs: %s driver_override: %w", pci, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "(null)" {
		v = ""
	}
	return v, nil
}

// Netdevs lists the netdevs of a PCI device, sorted.
func (s Sysfs) Netdevs(pci string) ([]string, error) {
	entries, err := os.ReadDir(s.dev(pci, "net"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("sysfs: %s netdevs: %w", pci, err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out, nil
}

// RDMADevices lists a PCI device's RDMA devices. On the real /sys it asks
// rdmamap; on another root it reads the same infiniband directory itself
// (rdmamap only knows /sys).
func (s Sysfs) RDMADevices(pci string) []string {
	if s.root() == DefaultSysfsRoot {
		return rdmamap.GetRdmaDevicesForPcidev(pci)
	}
	entries, err := os.ReadDir(s.dev(pci, "infiniband"))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// CharDev returns the major and minor numbers in a sysfs "dev" file
// ("MAJ:MIN") under class/<class>/<name>.
func (s Sysfs) CharDev(class, name string) (major, minor uint32, err error) {
	p := filepath.Join(s.root(), "class", class, name, "dev")
	b, err := os.ReadFile(p) //nolint:gosec // G304: a sysfs attribute under the configured root
	if err != nil {
		return 0, 0, fmt.Errorf("sysfs: %w", err)
	}
	a, c, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(c, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("sysfs: %s: %q is not MAJ:MIN", p, b)
	}
	return uint32(ma), uint32(mi), nil
}

// PCIDriver binds PCI devices to drivers. Sysfs implements it by writing
// driver_override, unbind and drivers_probe; tests substitute a fake that
// also does what the kernel would (move the driver link).
type PCIDriver interface {
	// SetDriverOverride writes driver_override ("" clears it).
	SetDriverOverride(pci, driver string) error
	// Unbind detaches the device from its driver; no driver is fine.
	Unbind(pci string) error
	// Probe asks the kernel to bind the device to a matching driver
	// (driver_override first).
	Probe(pci string) error
}

var _ PCIDriver = Sysfs{}

// SetDriverOverride implements PCIDriver.
func (s Sysfs) SetDriverOverride(pci, driver string) error {
	v := driver
	if v == "" {
		v = "\n" // an empty write clears the override
	}
	if err := os.WriteFile(s.dev(pci, "driver_override"), []byte(v), 0o200); err != nil {
		return fmt.Errorf("sysfs: %s driver_override %q: %w", pci, driver, err)
	}
	return nil
}

// Unbind implements PCIDriver.
func (s Sysfs) Unbind(pci string) error {
	d, err := s.Driver(pci)
	if err != nil || d == "" {
		return err
	}
	p := filepath.Join(s.root(), "bus", "pci", "drivers", d, "unbind")
	if err := os.WriteFile(p, []byte(pci), 0o200); err != nil {
		return fmt.Errorf("sysfs: unbind %s from %s: %w", pci, d, err)
	}
	return nil
}

// Probe implements PCIDriver.
func (s Sysfs) Probe(pci string) error {
	p := filepath.Join(s.root(), "bus", "pci", "drivers_probe")
	if err := os.WriteFile(p, []byte(pci), 0o200); err != nil {
		return fmt.Errorf("sysfs: probe %s: %w", pci, err)
	}
	return nil
}

// IOMMUGroupDevices lists the PCI devices in IOMMU group g.
func (s Sysfs) IOMMUGroupDevices(g int) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.root(), "kernel", "iommu_groups", strconv.Itoa(g), "devices"))
	if err != nil {
		return nil, fmt.Errorf("sysfs: iommu group %d: %w", g, err)
	}
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out, nil
}
