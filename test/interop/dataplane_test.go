package interop

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ebpfkernel "github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/vppapi"
)

// closingDataplane is a dataplane the test closes when its forwarder stops.
type closingDataplane interface {
	forwarder.Dataplane
	Close() error
}

// forEachDataplane runs body on the kernel/eBPF dataplane, and on the VPP
// dataplane when a VPP binary is found (VPP_BIN, or vpp in PATH); the
// subtest's name says which ("kernel", "vpp"), and newDataplane reads it.
func forEachDataplane(t *testing.T, body func(t *testing.T)) {
	t.Run("kernel", body)
	t.Run("vpp", func(t *testing.T) {
		if _, err := vppapi.FindBinary(os.Getenv("VPP_BIN")); err != nil {
			if os.Getenv("VPP_BIN") != "" {
				t.Fatal(err)
			}
			t.Skip(err.Error() + " to run the interop tiers on the VPP dataplane (VPP 25.10)")
		}
		body(t)
	})
}

func onVPP(t *testing.T) bool { return strings.Contains(t.Name(), "/vpp") }

// newDataplane starts nsmfwd's dataplane for w's node namespace: the
// kernel's, or (in a "vpp" subtest) the VPP dataplane on a VPP that the
// world starts once and keeps across forwarder restarts, as a DaemonSet's
// VPP outlives its forwarder.
func (w *world) newDataplane(t *testing.T) closingDataplane {
	t.Helper()
	if !onVPP(t) {
		pinDir := filepath.Join(ebpfkernel.DefaultPinDir, w.name)
		t.Cleanup(func() { _ = os.RemoveAll(pinDir) })
		dp, err := ebpfkernel.New(context.Background(), ebpfkernel.Options{Name: w.name, HostNetNS: w.node.path, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("kernel dataplane: %v", err)
		}
		return dp
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if w.vpp == nil {
		bin, err := vppapi.FindBinary(os.Getenv("VPP_BIN"))
		if err != nil {
			t.Fatal(err)
		}
		dir, err := os.MkdirTemp("", "vpp") // short: unix socket paths are limited
		if err != nil {
			t.Fatal(err)
		}
		p, err := vppapi.StartProcess(ctx, vppapi.ProcessOptions{Bin: bin, RuntimeDir: dir, NetNS: w.node.path, MainCore: -1})
		if err != nil {
			t.Fatalf("start VPP: %v", err)
		}
		t.Cleanup(func() { p.Stop(); _ = os.RemoveAll(dir) })
		w.vpp = p
	}
	conn, err := vppapi.Dial(ctx, vppapi.ConnOptions{Socket: w.vpp.APISocket(), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("connect to VPP: %v", err)
	}
	dp, err := vppapi.New(ctx, vppapi.Options{
		Name: w.name, Conn: conn, HostNetNS: w.node.path, MemifDir: filepath.Join(w.dir, "memif"),
		XDPDir: filepath.Join(w.vpp.RuntimeDir(), "xdp"), Logger: testLogger(t),
	})
	if err != nil {
		conn.Close()
		t.Fatalf("vpp dataplane: %v", err)
	}
	return vppDataplane{dp, conn}
}

// vppDataplane closes the VPP connection with the dataplane.
type vppDataplane struct {
	*vppapi.Dataplane
	conn *vppapi.Conn
}

func (d vppDataplane) Close() error {
	err := d.Dataplane.Close()
	d.conn.Close()
	return err
}
