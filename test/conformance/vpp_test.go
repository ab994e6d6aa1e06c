package conformance

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/vppapi"
)

// vppBin finds VPP through VPP_BIN or PATH, or skips the test.
func vppBin(t testing.TB) string {
	t.Helper()
	bin, err := vppapi.FindBinary(os.Getenv("VPP_BIN"))
	if err != nil {
		if os.Getenv("VPP_BIN") != "" {
			t.Fatal(err)
		}
		t.Skip(err.Error() + " to run the VPP dataplane suite (VPP 25.10)")
	}
	return bin
}

// vppWorld is one VPP per node namespace, shared by the forwarder
// instances a scenario starts there (a restart reuses it, as a DaemonSet's
// VPP outlives a forwarder restart).
type vppWorld struct {
	mu    sync.Mutex
	procs map[string]*vppapi.Process
	conns map[string]*vppapi.Conn
}

func vppHarness(t *testing.T, mode string) Harness {
	bin := vppBin(t)
	w := &vppWorld{procs: map[string]*vppapi.Process{}, conns: map[string]*vppapi.Conn{}}
	skip := "VPP 25.10's main loop livelocks once 16 af_packet sockets are readable at once " +
		"(vlib_file_poll, docs/operations.md), which concurrent connection setup triggers"
	buffers := 0
	scale, deaths := 0, 0
	if mode == vppapi.ModeTap {
		// A tap's queues are eventfds, which VPP drains when it reads
		// them: no livelock. 200 clients are 400 taps.
		skip, buffers = "", 163840
		if os.Getenv("NSMFWD_GUEST_VM") != "" {
			// Where taps are tested, in the guest-VM tier, TCG runs VPP
			// about ten times slower than a CPU does: VPP creates taps
			// one at a time, and 200 would outlast the per-call timeout.
			scale, deaths = 20, 20
		}
	}
	if mode == vppapi.ModeAFXDP {
		// AF_XDP queues polled (VPP's default) are outside VPP's epoll, so
		// the livelock cannot happen; 400 AF_XDP interfaces (200 clients)
		// need about 400 × 384 buffers.
		skip, buffers = "", 163840
	}
	return Harness{
		SkipConcurrent:   skip,
		ScaleConnections: scale,
		ManyDeaths:       deaths,
		NewDataplane: func(t testing.TB, hostNS, name string) forwarder.Dataplane {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			w.mu.Lock()
			defer w.mu.Unlock()
			p := w.procs[hostNS]
			if p == nil {
				// Short: unix socket paths are limited to 108 bytes.
				dir, err := os.MkdirTemp("", "vpp")
				if err != nil {
					t.Fatal(err)
				}
				p, err = vppapi.StartProcess(ctx, vppapi.ProcessOptions{Bin: bin, RuntimeDir: dir, NetNS: hostNS, MainCore: -1, Buffers: buffers})
				if err != nil {
					t.Fatalf("start VPP: %v", err)
				}
				w.procs[hostNS] = p
				t.Cleanup(func() {
					w.mu.Lock()
					delete(w.procs, hostNS)
					delete(w.conns, hostNS)
					w.mu.Unlock()
					p.Stop()
					if t.Failed() {
						out, _ := os.ReadFile(filepath.Join(dir, "vpp.out"))
						t.Logf("VPP output (%s):\n%s", dir, tail(out, 3000))
					}
					_ = os.RemoveAll(dir)
				})
			}
			conn, err := vppapi.Dial(ctx, vppapi.ConnOptions{Socket: p.APISocket(), Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("connect to VPP: %v", err)
			}
			t.Cleanup(conn.Close)
			w.conns[hostNS] = conn
			stats := vppapi.NewStats(p.StatsSocket())
			t.Cleanup(stats.Close)
			dp, err := vppapi.New(ctx, vppapi.Options{
				Name: name, Conn: conn, HostNetNS: hostNS, KernelMode: mode,
				MemifDir: filepath.Join(os.TempDir(), "nsmfwd-memif"), Stats: stats, Logger: testLogger(t),
				// nsmfwd's XDP program for AF_XDP, which VPP unloads with
				// the interface (VPP's default one it leaves loaded).
				XDPDir: filepath.Join(p.RuntimeDir(), "xdp"),
			})
			if err != nil {
				t.Fatalf("vpp dataplane: %v", err)
			}
			return dp
		},
		Objects: func(t testing.TB, hostNS string) []string {
			w.mu.Lock()
			conn := w.conns[hostNS]
			w.mu.Unlock()
			if conn == nil {
				return nil
			}
			return vppObjects(t, conn)
		},
	}
}

// vppObjects lists VPP's interfaces apart from local0, by name and tag.
func vppObjects(t testing.TB, conn *vppapi.Conn) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ifs, err := vppapi.Dump[*interfaces.SwInterfaceDetails](ctx, conn, &interfaces.SwInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		t.Fatalf("dump VPP interfaces: %v", err)
	}
	var out []string
	for _, i := range ifs {
		if i.InterfaceName == "local0" {
			continue
		}
		out = append(out, strings.TrimSpace(i.InterfaceName+" "+i.Tag))
	}
	return out
}

// TestVPPAFPacket runs the suite on the VPP dataplane with KERNEL sides
// attached by af_packet.
func TestVPPAFPacket(t *testing.T) { Run(t, vppHarness(t, vppapi.ModeAFPacket)) }

// TestVPPAFXDP runs the suite with KERNEL sides attached by AF_XDP, with
// nsmfwd's XDP program on the veth host ends.
func TestVPPAFXDP(t *testing.T) { Run(t, vppHarness(t, vppapi.ModeAFXDP)) }

// TestVPPTap runs the suite with KERNEL sides as tap v2 interfaces that
// VPP creates in the workload namespaces.
func TestVPPTap(t *testing.T) {
	if _, err := os.Stat("/dev/vhost-net"); err != nil {
		t.Skip("VPP's tap v2 needs /dev/vhost-net (the vhost_net module), which this machine does not have: " + err.Error())
	}
	Run(t, vppHarness(t, vppapi.ModeTap))
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
