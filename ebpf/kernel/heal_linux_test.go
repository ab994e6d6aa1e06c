package kernel

import (
	"context"

	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestEndpointDeathAndHeal: the endpoint's namespace dies; Alive says so,
// DisconnectSide removes the endpoint side and keeps the client's
// interface; a Connect toward a new endpoint (what NSM's heal asks for)
// rebuilds the vWire and traffic flows again.
func TestEndpointDeathAndHeal(t *testing.T) {
	for _, attach := range []string{"tc", "tcx"} {
		t.Run(attach, func(t *testing.T) {
			e := newEnv(t)
			client, oldEP := newPeer(t), newPeer(t)
			d := e.dataplane(attach)
			ctx := context.Background()
			c := newConn(t, "heal-"+attach, forwarder.PayloadEthernet, client, oldEP)
			if err := d.Connect(ctx, c); err != nil {
				t.Fatal(err)
			}
			pingAll(t, client, oldEP, "10.60.0.1")

			nstest.Delete(t, oldEP.name)
			// The kernel destroys a namespace asynchronously; in production
			// the check follows the RTM_DELLINK of the node end.
			var alive bool
			var reason string
			var err error
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				alive, reason, err = d.Alive(ctx, c, forwarder.SideEndpoint)
				if err != nil || !alive || time.Now().After(deadline) {
					break
				}
			}
			if err != nil || alive || reason != forwarder.ReasonEndpointNetNSGone {
				t.Fatalf("Alive(endpoint) = %v, %q, %v; want dead, %s", alive, reason, err, forwarder.ReasonEndpointNetNSGone)
			}
			if alive, _, err := d.Alive(ctx, c, forwarder.SideClient); err != nil || !alive {
				t.Fatalf("Alive(client) = %v, %v; want alive", alive, err)
			}
			if err := d.DisconnectSide(ctx, c.ID, forwarder.SideEndpoint); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(nstest.Links(t, client.path), "nsm0") {
				t.Fatal("DisconnectSide(endpoint) removed the client's interface")
			}

			// The heal: same connection, a new endpoint namespace.
			newEP := newPeer(t)
			healed := newConn(t, c.ID, forwarder.PayloadEthernet, client, newEP)
			if err := d.Connect(ctx, healed); err != nil {
				t.Fatalf("Connect toward the new endpoint: %v", err)
			}
			pingAll(t, client, newEP, "10.60.0.1")
			if err := d.Disconnect(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
			if got := nstest.Links(t, client.path); slices.Contains(got, "nsm0") {
				t.Fatalf("client links after Disconnect: %v", got)
			}
		})
	}
}

// TestReadyLoadsNoProgramsOnceProbed: health checks call Ready every few
// seconds; after the first success they must not load (probe) programs,
// which would show up in machine-wide BPF program counts. A probe frees its
// program before Ready returns, so the test watches the kernel's program id
// allocator instead: ids increase, so a marker program loaded before and
// after the Ready calls gets consecutive ids only if nothing else was loaded.
func TestReadyLoadsNoProgramsOnceProbed(t *testing.T) {
	e := newEnv(t)
	d := e.dataplane("auto")
	ctx := context.Background()
	if err := d.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	markerProgramID(t) // warm-up: cilium/ebpf probes kernel features once
	first := markerProgramID(t)
	for range 20 {
		if err := d.Ready(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if next := markerProgramID(t); next != first+1 {
		t.Fatalf("program ids went from %d to %d across 20 Ready calls: Ready loaded programs", first, next)
	}
}

// markerProgramID loads and unloads a trivial program and returns its id.
func markerProgramID(t *testing.T) ebpf.ProgramID {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Skip("kernel does not report program ids")
	}
	return id
}

// TestAdoptionThenRefreshRepairsDrift: a restart adopts an intact vWire
// without reading its L3 settings back (fast restarts); an address removed
// behind the forwarder's back is restored by the next refresh.
func TestAdoptionThenRefreshRepairsDrift(t *testing.T) {
	e := newEnv(t)
	client, endpoint := newPeer(t), newPeer(t)
	ctx := context.Background()
	d1 := e.dataplane("auto")
	c := newConn(t, "drift", forwarder.PayloadEthernet, client, endpoint)
	if err := d1.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if out, err := nstest.Exec(t, client.name, "ip", "addr", "del", "10.60.0.1/32", "dev", "nsm0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_ = d1.Close()

	d2 := e.dataplane("auto") // the restarted forwarder
	res, err := d2.Reconcile(ctx, []*forwarder.Conn{c.Clone()})
	if err != nil || len(res.Adopted) != 1 {
		t.Fatalf("Reconcile = %+v, %v; want the connection adopted", res, err)
	}
	if err := d2.Connect(ctx, c.Clone()); err != nil { // the next refresh
		t.Fatal(err)
	}
	pingAll(t, client, endpoint, "10.60.0.1")
	if err := d2.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
}
