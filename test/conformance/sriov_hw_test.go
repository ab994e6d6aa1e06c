//go:build sriov_hw

package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// hardwareHarness runs the suite on the SR-IOV dataplane with a real PF
// and its VFs, no fakes: NSMFWD_SRIOV_PF names the PF netdev (VFs enabled
// by the operator, kernel drivers bound) and NSMFWD_SRIOV_VFS how many of
// them the suite may use (the last for VFIO, the rest for KERNEL). The
// guest-VM tier (test/vm) runs it on QEMU's igb.
func hardwareHarness(t *testing.T) Harness {
	pfName := os.Getenv("NSMFWD_SRIOV_PF")
	n, err := strconv.Atoi(os.Getenv("NSMFWD_SRIOV_VFS"))
	if pfName == "" || err != nil || n < 3 {
		t.Skip("set NSMFWD_SRIOV_PF to an SR-IOV PF netdev and NSMFWD_SRIOV_VFS to how many of its VFs (>= 3) the suite may use")
	}
	s := sriov.Sysfs{}
	pci, err := s.PCIOfNetdev(pfName)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := s.ReadPF(pci)
	if err != nil {
		t.Fatal(err)
	}
	if len(pf.VFs) < n {
		t.Fatalf("PF %s has %d VFs, NSMFWD_SRIOV_VFS says %d", pfName, len(pf.VFs), n)
	}
	cfg := &sriov.Config{
		Version:      1,
		DefaultToken: "hw.example/sriov",
		PhysicalFunctions: []sriov.PFConfig{{
			Name: pfName, PFDriver: pf.Driver, Capabilities: []string{"sriov"},
			ServiceDomains: []string{"hw.example"}, VLANs: "100-199",
			VFs: []sriov.VFRange{
				{Range: fmt.Sprintf("0-%d", n-2), Use: sriov.UseKernel, Driver: pf.VFs[0].Driver},
				{Range: strconv.Itoa(n - 1), Use: sriov.UseVFIO, Driver: sriov.DriverVFIO},
			},
		}},
	}
	link := &sriov.NetlinkPF{}
	var mu sync.Mutex
	states := map[string]string{}
	return Harness{
		HostNode: true,
		// Every connection takes two kernel VFs.
		ScaleConnections: (n - 1) / 2,
		ManyDeaths:       (n-1)/2 - 1,
		SetupNode: func(t testing.TB, _ string) {
			before := make([]sriov.VFSettings, n)
			for i := range before {
				if before[i], err = link.VF(context.Background(), pfName, i); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				if t.Failed() {
					return
				}
				for i := range before {
					after, err := link.VF(context.Background(), pfName, i)
					if err != nil || after != before[i] {
						t.Errorf("VF %d not restored after the scenario: %+v, before %+v (%v)", i, after, before[i], err)
					}
				}
			})
		},
		NewDataplane: func(t testing.TB, _, name string) forwarder.Dataplane {
			mu.Lock()
			dir, ok := states[name]
			if !ok {
				dir = filepath.Join(t.TempDir(), "sriov")
				states[name] = dir
			}
			mu.Unlock()
			dp, err := sriov.New(context.Background(), sriov.Options{
				Name: name, Config: cfg, StateDir: dir, Logger: testLogger(t),
			})
			if err != nil {
				t.Fatalf("sriov dataplane: %v", err)
			}
			return dp
		},
	}
}

// TestSRIOVHardware runs the suite on real VFs.
func TestSRIOVHardware(t *testing.T) { Run(t, hardwareHarness(t)) }
