package conformance

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

func kernelHarness(attach string) Harness {
	return Harness{
		NewDataplane: func(t testing.TB, hostNS, name string) forwarder.Dataplane {
			// Runs after the forwarder instances are stopped: a dataplane
			// closed with no connection left removes its pin directory.
			pinDir := filepath.Join(kernel.DefaultPinDir, name)
			t.Cleanup(func() {
				if _, err := os.Stat(pinDir); err == nil {
					if !t.Failed() {
						left, _ := filepath.Glob(pinDir + "/*")
						t.Errorf("pin directory %s left behind, holding %v", pinDir, left)
					}
					_ = os.RemoveAll(pinDir)
				}
			})
			dp, err := kernel.New(context.Background(), kernel.Options{
				Name:      name,
				HostNetNS: hostNS,
				Attach:    attach,
				Logger:    testLogger(t),
			})
			if err != nil {
				t.Fatalf("kernel dataplane: %v", err)
			}
			return dp
		},
	}
}

// TestKernel runs the suite on the kernel dataplane with its default attach
// mode (clsact).
func TestKernel(t *testing.T) { Run(t, kernelHarness("auto")) }

// TestKernelTCX runs the main scenarios with tcx attachment.
func TestKernelTCX(t *testing.T) {
	h := kernelHarness("tcx")
	h.ScaleConnections = -1
	t.Run("PingBothWays/ETHERNET", func(t *testing.T) { testPing(t, h, forwarder.PayloadEthernet) })
	t.Run("PingBothWays/IP", func(t *testing.T) { testPing(t, h, forwarder.PayloadIP) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, h) })
	t.Run("Death", func(t *testing.T) { runDeath(t, h) })
}
