package sriov_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// watch runs dp.Watch until the test ends and returns its hints.
func watch(t *testing.T, dp *sriov.Dataplane) <-chan forwarder.Death {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan forwarder.Death, 64)
	done := make(chan error, 1)
	go func() { done <- dp.Watch(ctx, ch) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v", err)
		}
	})
	return ch
}

func waitHint(t *testing.T, ch <-chan forwarder.Death, want forwarder.Death) {
	t.Helper()
	timeout := time.After(3 * time.Second)
	for {
		select {
		case h := <-ch:
			if h == want {
				return
			}
		case <-timeout:
			t.Fatalf("no hint %+v within 3 s", want)
		}
	}
}

func TestWatchClientNetNSGone(t *testing.T) {
	w := newWorld(t)
	opts := sriov.Options{Name: "fwd", Config: w.cfg, StateDir: w.state, HostNetNS: w.node, SysfsRoot: w.nic.SysfsRoot,
		PFLink: w.nic.Link, PCIDriver: w.nic.PCI, Cgroups: w.cgroups, WatchInterval: 100 * time.Millisecond}
	dp, err := sriov.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ctx := context.Background()
	doomedName, doomed := nstest.New(t)
	c := w.conn(1, doomed)
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	hints := watch(t, dp)
	nstest.Delete(t, doomedName)
	waitHint(t, hints, forwarder.Death{ID: c.ID, Side: forwarder.SideClient, Reason: forwarder.ReasonClientNetNSGone})
	if alive, reason, err := dp.Alive(ctx, c, forwarder.SideClient); alive || reason != forwarder.ReasonClientNetNSGone || err != nil {
		t.Fatalf("client Alive: %v %q %v", alive, reason, err)
	}
	if alive, _, err := dp.Alive(ctx, c, forwarder.SideEndpoint); !alive || err != nil {
		t.Fatalf("endpoint Alive: %v %v", alive, err)
	}
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if changed := w.nic.Link.Changed(); len(changed) > 0 {
		t.Fatalf("VF settings not restored: %v", changed)
	}
	if f := dp.Figures(); f.Reclaimed != 1 {
		t.Fatalf("figures: %+v", f)
	}
	if n := records(t, w.state); n != 0 {
		t.Fatalf("%d records left", n)
	}
}

// TestWatchVFBackInHost: a VF netdev that shows up in the host namespace
// with our alias (what the kernel does with a VF whose namespace died) is
// a hint at once; and an endpoint side removed alone is rebuilt by the
// next Connect.
func TestWatchVFBackInHost(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	ctx := context.Background()
	c := w.conn(1, "")
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	hints := watch(t, dp)
	if out, err := nstest.Exec(t, w.endpointName, "ip", "link", "set", "nse1", "netns", filepath.Base(w.node)); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitHint(t, hints, forwarder.Death{ID: c.ID, Side: forwarder.SideEndpoint, Reason: forwarder.ReasonEndpointNetNSGone})
	if alive, reason, _ := dp.Alive(ctx, c, forwarder.SideEndpoint); alive || reason != forwarder.ReasonEndpointInterfaceGone {
		t.Fatalf("endpoint Alive: %v %q", alive, reason)
	}
	if err := dp.DisconnectSide(ctx, c.ID, forwarder.SideEndpoint); err != nil {
		t.Fatal(err)
	}
	if alive, _, _ := dp.Alive(ctx, c, forwarder.SideClient); !alive {
		t.Fatal("the client side went with the endpoint side")
	}
	if f := dp.Figures(); f.PFs[0].Counts[0].Allocated != 1 {
		t.Fatalf("after DisconnectSide: %+v", f.PFs[0])
	}
	// The heal: a Connect rebuilds the endpoint side on the client's VLAN.
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	w.ping(w.clientName, "10.0.1.2")
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	w.requireRestored("after Close")
}
