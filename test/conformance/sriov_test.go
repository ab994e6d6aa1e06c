package conformance

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
)

// sriovHarness runs the suite on the SR-IOV dataplane with stand-ins
// (sriovtest.NIC): VF netdevs are veths in the node namespace whose other
// ends are ports of a fake embedded switch, which joins the client's and
// the endpoint's VF when the dataplane gives both the connection's VLAN
// through the (recording, fake) PF. The NIC lives as long as the scenario,
// across forwarder restarts, like hardware.
func sriovHarness() Harness {
	var mu sync.Mutex
	nics := map[string]*sriovtest.NIC{}
	states := map[string]string{}
	return Harness{
		// Every connection takes two of the 12 kernel VFs.
		ScaleConnections: 5,
		// A real VF's netdev returns to the host when its namespace dies;
		// a veth stand-in dies with it, so the node's links cannot come
		// back as the death scenarios expect. The SR-IOV Watcher has its
		// own tests (sriov/watch_linux_test.go).
		SkipDeath: "VF stand-ins (veth) die with their namespace where real VFs come back; see sriov/watch_linux_test.go",
		SetupNode: func(t testing.TB, nodeNS string) {
			nic := sriovtest.NewNIC(t, nodeNS)
			mu.Lock()
			defer mu.Unlock()
			nics[nodeNS] = nic
			states[nodeNS] = filepath.Join(t.TempDir(), "sriov")
			t.Cleanup(func() {
				if t.Failed() {
					return
				}
				if changed := nic.Link.Changed(); len(changed) > 0 {
					t.Errorf("VF settings not restored after the scenario: %v", changed)
				}
			})
		},
		NewDataplane: func(t testing.TB, hostNS, name string) forwarder.Dataplane {
			mu.Lock()
			nic, stateDir := nics[hostNS], states[hostNS]
			mu.Unlock()
			if nic == nil {
				// A probe in the test's own namespace: a NIC-less tree.
				root := t.TempDir()
				sriovtest.WriteSysfs(t, root, sriovtest.StandardPF("probe0", "probev"))
				cfg := &sriov.Config{Version: 1, PhysicalFunctions: []sriov.PFConfig{{
					PCIAddress: "0000:3b:00.0", PFDriver: "ice", ServiceDomains: []string{"d"}, Capabilities: []string{"c"},
					VFs: []sriov.VFRange{{Range: "0-3", Use: sriov.UseKernel, Driver: "iavf"}},
				}}}
				dp, err := sriov.New(context.Background(), sriov.Options{
					Name: name, Config: cfg, StateDir: t.TempDir(), SysfsRoot: root,
					PFLink: sriovtest.NewPFLink("probe0", 16), PCIDriver: &sriovtest.PCI{Root: root},
					Cgroups: &sriovtest.Cgroups{}, Logger: testLogger(t),
				})
				if err != nil {
					t.Fatalf("sriov dataplane: %v", err)
				}
				return dp
			}
			dp, err := sriov.New(context.Background(), sriov.Options{
				Name:      name,
				Config:    nic.Config(),
				StateDir:  stateDir,
				HostNetNS: hostNS,
				SysfsRoot: nic.SysfsRoot,
				PFLink:    nic.Link,
				PCIDriver: nic.PCI,
				Cgroups:   &sriovtest.Cgroups{},
				Logger:    testLogger(t),
			})
			if err != nil {
				t.Fatalf("sriov dataplane: %v", err)
			}
			return dp
		},
	}
}

// TestSRIOV runs the suite on the SR-IOV dataplane with stand-ins.
func TestSRIOV(t *testing.T) { Run(t, sriovHarness()) }

// TestSRIOVPoolExhausted: with the pool's 12 kernel VFs taken by 6
// connections, the next Request gets ResourceExhausted through the NSM API
// and leaves nothing behind; closing everything restores every VF.
func TestSRIOVPoolExhausted(t *testing.T) {
	e := newEnv(t, sriovHarness())
	var conns []*networkservice.Connection
	for i := range 6 {
		conns = append(conns, e.mustRequest(nsc.RequestOptions{IfName: fmt.Sprintf("nsm%d", i)}))
	}
	during := e.snapshot()
	_, err := e.request(nsc.RequestOptions{IfName: "nsm6"})
	if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "sriovToken") {
		t.Fatalf("Request on an empty pool: %v, want ResourceExhausted naming sriovToken", err)
	}
	e.requireUnchanged("a refused Request", during)
	if n := len(e.fwd.srv.Connections()); n != 6 {
		t.Fatalf("forwarder holds %d connections, want 6", n)
	}
	if n := e.ep.Leases(); n != 6 {
		t.Fatalf("endpoint holds %d leases, want 6", n)
	}
	for _, c := range conns {
		if err := nsc.Close(e.ctx(), e.nsc, c); err != nil {
			t.Fatal(err)
		}
	}
	e.requireClean("after Close")
}
