// Package sriovtest provides stand-ins for SR-IOV hardware: a fake sysfs
// tree, a fake of the kernel's PCI driver binding, a recording fake of the
// PF's VF settings and (on Linux, as root) veth netdevs standing in for VF
// netdevs behind a fake NIC switch.
package sriovtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// PFSpec describes a fake PF and its VFs.
type PFSpec struct {
	PCI      string
	Netdev   string
	Driver   string
	TotalVFs int
	VFs      []VFSpec // NumVFs is len(VFs)
}

// VFSpec describes a fake VF; VF i of PFSpec.VFs is virtfn<i>.
type VFSpec struct {
	PCI        string
	IOMMUGroup int // -1: none
	Driver     string
	Netdev     string // "" for none
	RDMA       []string
}

// VFIOMajor is the major number the fake tree gives /dev/vfio/<group>
// devices; /dev/vfio/vfio is misc 10:196 as on Linux.
const VFIOMajor = 243

// WriteSysfs builds the tree of pfs under root the way Linux lays it out:
// devices under devices/, bus/pci/devices/<pci> links to them, virtfnN and
// physfn links, iommu_group and driver links, net/<ifname> directories,
// class/net/<ifname>/device links and the vfio character device numbers.
// The virtfnN links are created in scrambled order so that nothing can
// depend on listing order.
func WriteSysfs(t testing.TB, root string, pfs ...PFSpec) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	devices := filepath.Join(root, "devices", "pci0000:00")
	write := func(path, data string) {
		must(os.MkdirAll(filepath.Dir(path), 0o750))
		must(os.WriteFile(path, []byte(data), 0o600))
	}
	link := func(target, path string) {
		must(os.MkdirAll(filepath.Dir(path), 0o750))
		must(os.Symlink(target, path))
	}
	write(filepath.Join(root, "bus", "pci", "drivers_probe"), "")
	write(filepath.Join(root, "class", "misc", "vfio", "dev"), "10:196\n")
	groups := map[int]bool{}
	device := func(pci, driver, netdev string, group int, rdma []string) string {
		dir := filepath.Join(devices, pci)
		must(os.MkdirAll(dir, 0o750))
		link("../../../devices/pci0000:00/"+pci, filepath.Join(root, "bus", "pci", "devices", pci))
		write(filepath.Join(dir, "driver_override"), "(null)\n")
		if driver != "" {
			must(os.MkdirAll(filepath.Join(root, "bus", "pci", "drivers", driver), 0o750))
			link("../../../bus/pci/drivers/"+driver, filepath.Join(dir, "driver"))
		}
		if netdev != "" {
			must(os.MkdirAll(filepath.Join(dir, "net", netdev), 0o750))
			link("../../../devices/pci0000:00/"+pci, filepath.Join(root, "class", "net", netdev, "device"))
		}
		if group >= 0 {
			g := strconv.Itoa(group)
			link("../../../kernel/iommu_groups/"+g, filepath.Join(dir, "iommu_group"))
			link("../../../../devices/pci0000:00/"+pci, filepath.Join(root, "kernel", "iommu_groups", g, "devices", pci))
			if !groups[group] {
				groups[group] = true
				write(filepath.Join(root, "class", "vfio", g, "dev"), fmt.Sprintf("%d:%d\n", VFIOMajor, group))
			}
		}
		for _, r := range rdma {
			must(os.MkdirAll(filepath.Join(dir, "infiniband", r), 0o750))
		}
		return dir
	}
	for _, pf := range pfs {
		dir := device(pf.PCI, pf.Driver, pf.Netdev, -1, nil)
		write(filepath.Join(dir, "sriov_totalvfs"), fmt.Sprintf("%d\n", pf.TotalVFs))
		write(filepath.Join(dir, "sriov_numvfs"), fmt.Sprintf("%d\n", len(pf.VFs)))
		for _, vf := range pf.VFs {
			vdir := device(vf.PCI, vf.Driver, vf.Netdev, vf.IOMMUGroup, vf.RDMA)
			link("../"+pf.PCI, filepath.Join(vdir, "physfn"))
		}
		// Scrambled: last first, then the rest.
		order := make([]int, 0, len(pf.VFs))
		for i := len(pf.VFs) - 1; i >= 0; i -= 2 {
			order = append(order, i)
		}
		for i := len(pf.VFs) - 2; i >= 0; i -= 2 {
			order = append(order, i)
		}
		for _, i := range order {
			link("../"+pf.VFs[i].PCI, filepath.Join(dir, "virtfn"+strconv.Itoa(i)))
		}
	}
}

// StandardPF is the PF the tests use: 0000:3b:00.0 ("ens1f0", driver ice)
// with 16 VFs 0000:3b:02.0-0000:3b:03.7, netdevs <vfPrefix><N> bound to
// iavf; VFs 12-13 share IOMMU group 112 and VFs 14-15 share group 114,
// the others have a group of their own (100+N).
func StandardPF(pfNetdev, vfPrefix string) PFSpec {
	pf := PFSpec{PCI: "0000:3b:00.0", Netdev: pfNetdev, Driver: "ice", TotalVFs: 64}
	for i := range 16 {
		group := 100 + i
		switch i {
		case 13:
			group = 112
		case 15:
			group = 114
		}
		pf.VFs = append(pf.VFs, VFSpec{
			PCI:        fmt.Sprintf("0000:3b:%02x.%d", 2+i/8, i%8),
			IOMMUGroup: group,
			Driver:     "iavf",
			Netdev:     fmt.Sprintf("%s%d", vfPrefix, i),
		})
	}
	return pf
}
