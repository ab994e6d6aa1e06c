package sriov_test

import (
	"slices"
	"testing"

	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
)

// TestReadPF reads the fake tree: the VF index comes from the virtfnN link
// name, whatever the listing order (the tree creates the links scrambled,
// and virtfn10 sorts before virtfn2).
func TestReadPF(t *testing.T) {
	root := t.TempDir()
	spec := sriovtest.StandardPF("ens1f0", "ens1f0v")
	spec.VFs[3].RDMA = []string{"mlx5_3"}
	spec.VFs[5].Driver = ""
	spec.VFs[5].Netdev = ""
	sriovtest.WriteSysfs(t, root, spec)
	s := sriov.Sysfs{Root: root}

	pci, err := s.PCIOfNetdev("ens1f0")
	if err != nil || pci != spec.PCI {
		t.Fatalf("PCIOfNetdev: %q %v", pci, err)
	}
	pf, err := s.ReadPF(spec.PCI)
	if err != nil {
		t.Fatal(err)
	}
	if pf.NumVFs != 16 || pf.TotalVFs != 64 || pf.Driver != "ice" || pf.Netdev != "ens1f0" || len(pf.VFs) != 16 {
		t.Fatalf("pf: %+v", pf)
	}
	for i, vf := range pf.VFs {
		want := spec.VFs[i]
		if vf.Index != i || vf.PCI != want.PCI || vf.IOMMUGroup != want.IOMMUGroup || vf.Driver != want.Driver {
			t.Errorf("VF %d: got %+v, want %+v", i, vf, want)
		}
		if want.Netdev != "" && !slices.Equal(vf.Netdevs, []string{want.Netdev}) {
			t.Errorf("VF %d netdevs %v", i, vf.Netdevs)
		}
	}
	if pf.VFs[10].PCI != "0000:3b:03.2" || pf.VFs[10].Netdevs[0] != "ens1f0v10" {
		t.Fatalf("VF 10: %+v", pf.VFs[10])
	}
	if !slices.Equal(pf.VFs[3].RDMA, []string{"mlx5_3"}) || len(pf.VFs[5].Netdevs) != 0 || pf.VFs[5].Driver != "" {
		t.Fatalf("VF 3 RDMA %v, VF 5 %+v", pf.VFs[3].RDMA, pf.VFs[5])
	}
	if got, err := s.PhysFn(pf.VFs[12].PCI); err != nil || got != spec.PCI {
		t.Fatalf("PhysFn: %q %v", got, err)
	}
	if _, err := s.PhysFn(spec.PCI); err == nil {
		t.Fatal("PhysFn of the PF succeeded")
	}
	devs, err := s.IOMMUGroupDevices(114)
	if err != nil || !slices.Equal(devs, []string{spec.VFs[14].PCI, spec.VFs[15].PCI}) {
		t.Fatalf("group 114: %v %v", devs, err)
	}
	if ma, mi, err := s.CharDev("vfio", "114"); err != nil || ma != sriovtest.VFIOMajor || mi != 114 {
		t.Fatalf("CharDev vfio/114: %d:%d %v", ma, mi, err)
	}
	if ma, mi, err := s.CharDev("misc", "vfio"); err != nil || ma != 10 || mi != 196 {
		t.Fatalf("CharDev misc/vfio: %d:%d %v", ma, mi, err)
	}
	if ov, err := s.DriverOverride(spec.VFs[0].PCI); err != nil || ov != "" {
		t.Fatalf("driver_override: %q %v", ov, err)
	}
	if _, err := s.ReadPF("0000:00:00.0"); err == nil {
		t.Fatal("ReadPF of a missing device succeeded")
	}
	if _, err := s.ReadPF(spec.VFs[0].PCI); err == nil {
		t.Fatal("ReadPF of a VF succeeded")
	}
}

// TestSysfsBinding checks what Sysfs writes for driver_override, unbind
// and drivers_probe (a plain tree: nothing rebinds).
func TestSysfsBinding(t *testing.T) {
	root := t.TempDir()
	spec := sriovtest.StandardPF("ens1f0", "ens1f0v")
	sriovtest.WriteSysfs(t, root, spec)
	s := sriov.Sysfs{Root: root}
	vf := spec.VFs[14].PCI
	for _, step := range []func() error{
		func() error { return s.SetDriverOverride(vf, sriov.DriverVFIO) },
		func() error { return s.Unbind(vf) },
		func() error { return s.Probe(vf) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	for path, want := range map[string]string{
		"bus/pci/devices/" + vf + "/driver_override": "vfio-pci",
		"bus/pci/drivers/iavf/unbind":                vf,
		"bus/pci/drivers_probe":                      vf,
	} {
		if got := readFile(t, root+"/"+path); got != want {
			t.Errorf("%s: %q, want %q", path, got, want)
		}
	}
	if err := s.SetDriverOverride(vf, ""); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, root+"/bus/pci/devices/"+vf+"/driver_override"); got != "\n" {
		t.Errorf("cleared driver_override: %q", got)
	}
}
