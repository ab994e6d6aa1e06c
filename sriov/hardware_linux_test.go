//go:build sriov_hw

package sriov_test

// Tests against a real SR-IOV NIC. They run only with the build tag and
// NSMFWD_SRIOV_PF naming the PF netdev (VFs already enabled by the
// operator; the tests never change sriov_numvfs):
//
//	NSMFWD_SRIOV_PF=ens1f0 go test -tags sriov_hw -run Hardware ./sriov/
//
// NSMFWD_SRIOV_VF (a VF index, kernel driver bound) additionally runs a
// full connect / restore cycle on that VF, moving its netdev into
// throwaway namespaces.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/k8snetworkplumbingwg/sriovnet"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
)

func hardwarePF(t *testing.T) string {
	pf := os.Getenv("NSMFWD_SRIOV_PF")
	if pf == "" {
		t.Skip("set NSMFWD_SRIOV_PF to the netdev of an SR-IOV PF with VFs enabled")
	}
	nstest.RequireRoot(t)
	return pf
}

// TestHardwareDiscovery reads the real PF and checks it against sriovnet,
// which reads the same /sys its own way.
func TestHardwareDiscovery(t *testing.T) {
	name := hardwarePF(t)
	s := sriov.Sysfs{}
	pci, err := s.PCIOfNetdev(name)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := s.ReadPF(pci)
	if err != nil {
		t.Fatal(err)
	}
	if pf.NumVFs == 0 || len(pf.VFs) != pf.NumVFs {
		t.Fatalf("PF %s: sriov_numvfs %d, %d VFs read", pci, pf.NumVFs, len(pf.VFs))
	}
	link := &sriov.NetlinkPF{}
	for _, vf := range pf.VFs {
		idx, err := sriovnet.GetVfIndexByPciAddress(vf.PCI)
		if err != nil || idx != vf.Index {
			t.Errorf("VF %s: index %d, sriovnet says %d (%v)", vf.PCI, vf.Index, idx, err)
		}
		if p, err := sriovnet.GetPfPciFromVfPci(vf.PCI); err != nil || p != pci {
			t.Errorf("VF %s: PF %s, sriovnet says %s (%v)", vf.PCI, pci, p, err)
		}
		if _, err := link.VF(context.Background(), name, vf.Index); err != nil {
			t.Errorf("VF %d settings: %v", vf.Index, err)
		}
		t.Logf("VF %d %s group %d driver %q netdevs %v rdma %v", vf.Index, vf.PCI, vf.IOMMUGroup, vf.Driver, vf.Netdevs, vf.RDMA)
	}
}

// TestHardwareConnectRestore gives one VF to a client and an endpoint
// namespace and checks that Close restores its PF settings.
func TestHardwareConnectRestore(t *testing.T) {
	name := hardwarePF(t)
	idx, err := strconv.Atoi(os.Getenv("NSMFWD_SRIOV_VF"))
	if err != nil {
		t.Skip("set NSMFWD_SRIOV_VF to a kernel VF index to run a connect/restore cycle")
	}
	s := sriov.Sysfs{}
	pci, _ := s.PCIOfNetdev(name)
	pf, err := s.ReadPF(pci)
	if err != nil || idx+1 >= len(pf.VFs) {
		t.Fatalf("PF %s: %v (need VFs %d and %d)", pci, err, idx, idx+1)
	}
	cfg := &sriov.Config{Version: 1, DefaultToken: "hw/test", PhysicalFunctions: []sriov.PFConfig{{
		Name: name, PFDriver: pf.Driver, ServiceDomains: []string{"hw"}, Capabilities: []string{"test"}, VLANs: "3900-3909",
		VFs: []sriov.VFRange{{Range: fmt.Sprintf("%d-%d", idx, idx+1), Use: sriov.UseKernel, Driver: pf.VFs[idx].Driver}},
	}}}
	dp, err := sriov.New(context.Background(), sriov.Options{Name: "hwtest", Config: cfg, StateDir: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	link := &sriov.NetlinkPF{}
	before := make([]sriov.VFSettings, 2)
	for i := range before {
		if before[i], err = link.VF(context.Background(), name, idx+i); err != nil {
			t.Fatal(err)
		}
	}
	_, client := nstest.New(t)
	_, endpoint := nstest.New(t)
	c := &forwarder.Conn{ID: "hw-1", Payload: forwarder.PayloadEthernet,
		Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
			forwarder.ParamNetNSURL: "file://" + client, forwarder.ParamIfName: "nsm0"}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.1/30")}}},
		Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
			forwarder.ParamNetNSURL: "file://" + endpoint, forwarder.ParamIfName: "nse0"}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.99.0.2/30")}}},
	}
	if err := dp.Connect(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if err := dp.Disconnect(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	for i := range before {
		after, err := link.VF(context.Background(), name, idx+i)
		if err != nil || after != before[i] {
			t.Errorf("VF %d: %v after Close, %v before (%v)", idx+i, after, before[i], err)
		}
	}
}
