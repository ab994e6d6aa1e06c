package sriov_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
)

// newTestDataplane discovers the standard fake PF (no netdevs are
// touched: allocation is tested on the pool alone).
func newTestDataplane(t *testing.T, edit func(*sriovtest.PFSpec), cfg *sriov.Config) *sriov.Dataplane {
	t.Helper()
	root := t.TempDir()
	spec := sriovtest.StandardPF("ens1f0", "ens1f0v")
	if edit != nil {
		edit(&spec)
	}
	sriovtest.WriteSysfs(t, root, spec)
	dp, err := sriov.New(context.Background(), sriov.Options{
		Name: "fwd", Config: cfg, StateDir: t.TempDir(), SysfsRoot: root,
		PFLink: sriovtest.NewPFLink("ens1f0", 16), PCIDriver: &sriovtest.PCI{Root: root}, Cgroups: &sriovtest.Cgroups{},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	return dp
}

func testConfig(ranges ...sriov.VFRange) *sriov.Config {
	return &sriov.Config{Version: 1, PhysicalFunctions: []sriov.PFConfig{{
		Name: "ens1f0", PFDriver: "ice", Capabilities: []string{"10G"}, ServiceDomains: []string{"a"}, VLANs: "100-104", VFs: ranges,
	}}}
}

func TestPickRespectsIOMMUGroups(t *testing.T) {
	dp := newTestDataplane(t, nil, testConfig(sriov.VFRange{Range: "0-11", Use: sriov.UseKernel, Driver: "iavf"}, sriov.VFRange{Range: "12-15", Use: sriov.UseVFIO, Driver: sriov.DriverVFIO}))
	g1, err := dp.Pick("a/10G", sriov.UseVFIO, "", "c1", forwarder.SideClient)
	if err != nil || len(g1) != 2 || g1[0].Index != 12 || g1[1].Index != 13 {
		t.Fatalf("first VFIO pick: %v %v", g1, err)
	}
	g2, err := dp.Pick("a/10G", sriov.UseVFIO, "", "c2", forwarder.SideClient)
	if err != nil || len(g2) != 2 || g2[0].Index != 14 {
		t.Fatalf("second VFIO pick: %v %v", g2, err)
	}
	if _, err := dp.Pick("a/10G", sriov.UseVFIO, "", "c3", forwarder.SideClient); !errors.Is(err, sriov.ErrExhausted) {
		t.Fatalf("third VFIO pick: %v", err)
	}
	if _, err := dp.Pick("b/10G", sriov.UseKernel, "", "c4", forwarder.SideClient); !errors.Is(err, sriov.ErrExhausted) {
		t.Fatalf("pick from a pool no PF serves: %v", err)
	}
	// Kernel VFs: one each, VLANs per connection, the endpoint side on the
	// client's VLAN; the PF's five VLANs (two went to the VFIO clients) run
	// out before its VFs.
	for i := range 3 {
		id := fmt.Sprintf("k%d", i)
		c, err := dp.Pick("a/10G", sriov.UseKernel, "", id, forwarder.SideClient)
		if err != nil {
			t.Fatal(err)
		}
		e, err := dp.Pick("", sriov.UseKernel, c[0].PF, id, forwarder.SideEndpoint)
		if err != nil {
			t.Fatal(err)
		}
		if c[0].VLAN != 102+i || e[0].VLAN != c[0].VLAN {
			t.Fatalf("conn %s: VLANs %d and %d", id, c[0].VLAN, e[0].VLAN)
		}
	}
	if _, err := dp.Pick("a/10G", sriov.UseKernel, "", "k3", forwarder.SideClient); !errors.Is(err, sriov.ErrExhausted) {
		t.Fatalf("pick with every VLAN in use: %v", err)
	}
	dp.ReleaseAll("c1")
	if !dp.Available("a/10G", sriov.UseVFIO) {
		t.Fatal("released group not available")
	}
}

func TestPickGroupWithUnmanagedMember(t *testing.T) {
	// VF 12 shares group 112 with VF 13 but is not the forwarder's: the
	// group cannot go to a VFIO client. VF 0 is bound to another driver
	// than configured and VF 1 has no netdev: neither is given out.
	dp := newTestDataplane(t, func(s *sriovtest.PFSpec) {
		s.VFs[0].Driver = "mlx5_core"
		s.VFs[1].Netdev = ""
	}, testConfig(sriov.VFRange{Range: "0-2", Use: sriov.UseKernel, Driver: "iavf"}, sriov.VFRange{Range: "13-15", Use: sriov.UseVFIO, Driver: sriov.DriverVFIO}))
	g, err := dp.Pick("a/10G", sriov.UseVFIO, "", "c1", forwarder.SideClient)
	if err != nil || g[0].Index != 14 {
		t.Fatalf("VFIO pick: %v %v", g, err)
	}
	if _, err := dp.Pick("a/10G", sriov.UseVFIO, "", "c2", forwarder.SideClient); !errors.Is(err, sriov.ErrExhausted) {
		t.Fatalf("group with an unmanaged member handed out: %v", err)
	}
	k, err := dp.Pick("a/10G", sriov.UseKernel, "", "c3", forwarder.SideClient)
	if err != nil || k[0].Index != 2 {
		t.Fatalf("kernel pick: %v %v", k, err)
	}
	if _, err := dp.Pick("a/10G", sriov.UseKernel, "", "c4", forwarder.SideClient); !errors.Is(err, sriov.ErrExhausted) {
		t.Fatalf("ineligible kernel VF handed out: %v", err)
	}
}

func TestNewChecksNumVFs(t *testing.T) {
	root := t.TempDir()
	sriovtest.WriteSysfs(t, root, sriovtest.StandardPF("ens1f0", "ens1f0v"))
	for name, cfg := range map[string]*sriov.Config{
		"range beyond sriov_numvfs": testConfig(sriov.VFRange{Range: "10-20", Use: sriov.UseKernel, Driver: "iavf"}),
		"wrong pf driver": {Version: 1, PhysicalFunctions: []sriov.PFConfig{{Name: "ens1f0", PFDriver: "ixgbe", ServiceDomains: []string{"a"},
			VFs: []sriov.VFRange{{Range: "0", Use: sriov.UseKernel, Driver: "iavf"}}}}},
		"unknown netdev": {Version: 1, PhysicalFunctions: []sriov.PFConfig{{Name: "nosuch0", PFDriver: "ice", ServiceDomains: []string{"a"},
			VFs: []sriov.VFRange{{Range: "0", Use: sriov.UseKernel, Driver: "iavf"}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := sriov.New(context.Background(), sriov.Options{Name: "fwd", Config: cfg, StateDir: t.TempDir(), SysfsRoot: root})
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
