package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// recDP is a dataplane that records its calls.
type recDP struct {
	name  string
	mechs []string
	mu    sync.Mutex
	calls []string
	conns map[string]bool
}

func newRecDP(name string, mechs ...string) *recDP {
	return &recDP{name: name, mechs: mechs, conns: map[string]bool{}}
}

func (d *recDP) log(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, fmt.Sprintf(format, args...))
}

func (d *recDP) Calls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

func (d *recDP) Name() string                           { return d.name }
func (d *recDP) Mechanisms(forwarder.SideKind) []string { return d.mechs }
func (d *recDP) Check(_ context.Context, id string, side forwarder.SideKind, _ forwarder.Mechanism) error {
	d.log("check %s %s", id, side)
	return nil
}
func (d *recDP) Connect(_ context.Context, c *forwarder.Conn) error {
	d.log("connect %s", c.ID)
	d.mu.Lock()
	d.conns[c.ID] = true
	d.mu.Unlock()
	return nil
}
func (d *recDP) Disconnect(_ context.Context, id string) error {
	d.log("disconnect %s", id)
	d.mu.Lock()
	delete(d.conns, id)
	d.mu.Unlock()
	return nil
}
func (d *recDP) Reconcile(_ context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	var res forwarder.ReconcileResult
	for _, c := range wanted {
		res.Adopted = append(res.Adopted, c.ID)
	}
	d.log("reconcile %v", res.Adopted)
	return res, nil
}
func (d *recDP) Stats(_ context.Context, id string) (forwarder.Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.conns[id] {
		return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "no %s", id)
	}
	return forwarder.Stats{ClientToEndpoint: forwarder.Counters{Packets: uint64(len(d.name))}}, nil
}
func (d *recDP) Ready(context.Context) error { return nil }
func (d *recDP) Close() error                { d.log("close"); return nil }

// watchDP adds forwarder.Watcher to recDP.
type watchDP struct{ *recDP }

func (d watchDP) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	ch <- forwarder.Death{ID: d.name}
	<-ctx.Done()
	return ctx.Err()
}
func (d watchDP) Alive(_ context.Context, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	d.log("alive %s %s", c.ID, side)
	return false, d.name, nil
}
func (d watchDP) DisconnectSide(_ context.Context, id string, side forwarder.SideKind) error {
	d.log("disconnect-side %s %s", id, side)
	return nil
}

func kernelConn(id string, params map[string]string) *forwarder.Conn {
	return &forwarder.Conn{ID: id, Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: params}}}
}

func TestComposite(t *testing.T) {
	k := watchDP{newRecDP("kernel", forwarder.MechanismKernel)}
	s := watchDP{newRecDP("sriov", forwarder.MechanismKernel, sriov.MechanismVFIO)}
	c := newComposite(k, s)
	ctx := context.Background()
	if got := c.Mechanisms(forwarder.SideClient); !slices.Equal(got, []string{forwarder.MechanismKernel, sriov.MechanismVFIO}) {
		t.Fatalf("mechanisms %v", got)
	}
	plain := kernelConn("plain", nil)
	vf := kernelConn("vf", map[string]string{sriov.ParamSRIOVToken: "a/10G"})
	vfio := &forwarder.Conn{ID: "vfio", Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: sriov.MechanismVFIO}}}
	for _, conn := range []*forwarder.Conn{plain, vf, vfio} {
		if err := c.Check(ctx, conn.ID, forwarder.SideClient, conn.Client.Mechanism); err != nil {
			t.Fatal(err)
		}
		if err := c.Check(ctx, conn.ID, forwarder.SideEndpoint, forwarder.Mechanism{Type: forwarder.MechanismKernel}); err != nil {
			t.Fatal(err)
		}
		if err := c.Connect(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
	wantK := []string{"check plain client", "check plain endpoint", "connect plain", "check vf endpoint", "check vfio endpoint"}
	wantS := []string{"check vf client", "connect vf", "check vfio client", "connect vfio"}
	if !slices.Equal(k.Calls(), wantK) || !slices.Equal(s.Calls(), wantS) {
		t.Fatalf("kernel %v\nsriov %v", k.Calls(), s.Calls())
	}
	if st, err := c.Stats(ctx, "vf"); err != nil || st.ClientToEndpoint.Packets != 5 {
		t.Fatalf("stats of vf: %+v %v", st, err)
	}
	// A refresh that now asks for a VF moves the connection.
	plain.Client.Mechanism.Params = map[string]string{sriov.ParamTokenID: "a/10G"}
	if err := c.Connect(ctx, plain); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(k.Calls(), "disconnect plain") || !slices.Contains(s.Calls(), "connect plain") {
		t.Fatalf("route change: kernel %v sriov %v", k.Calls(), s.Calls())
	}
	if _, _, err := c.Alive(ctx, vfio, forwarder.SideClient); err != nil || !slices.Contains(s.Calls(), "alive vfio client") {
		t.Fatalf("alive: %v %v", err, s.Calls())
	}
	if err := c.DisconnectSide(ctx, "vf", forwarder.SideEndpoint); err != nil || !slices.Contains(s.Calls(), "disconnect-side vf endpoint") || slices.Contains(k.Calls(), "disconnect-side vf endpoint") {
		t.Fatalf("disconnect side: %v kernel %v", err, k.Calls())
	}
	if err := c.Disconnect(ctx, "vf"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stats(ctx, "vf"); forwarder.CodeOf(err) != forwarder.CodeNotFound {
		t.Fatalf("stats after Disconnect: %v", err)
	}

	// A restart: Reconcile splits the wanted set.
	k2, s2 := watchDP{newRecDP("kernel")}, watchDP{newRecDP("sriov")}
	c2 := newComposite(k2, s2)
	res, err := c2.Reconcile(ctx, []*forwarder.Conn{kernelConn("a", nil), vf, vfio})
	if err != nil || len(res.Adopted) != 3 {
		t.Fatalf("reconcile: %+v %v", res, err)
	}
	if !slices.Equal(k2.Calls(), []string{"reconcile [a]"}) || !slices.Equal(s2.Calls(), []string{"reconcile [vf vfio]"}) {
		t.Fatalf("reconcile split: %v %v", k2.Calls(), s2.Calls())
	}

	// Watch merges both watchers and stops with ctx.
	wctx, cancel := context.WithCancel(ctx)
	ch := make(chan forwarder.Death, 4)
	done := make(chan error, 1)
	go func() { done <- c.Watch(wctx, ch) }()
	got := map[string]bool{}
	for range 2 {
		select {
		case d := <-ch:
			got[d.ID] = true
		case <-time.After(5 * time.Second):
			t.Fatal("no hints")
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) || !got["kernel"] || !got["sriov"] {
		t.Fatalf("watch: %v, hints %v", err, got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if c.Name() != "kernel+sriov" || sriovOf(c) != nil || mechanismRegistry(c) == nil {
		t.Fatal("a composite of fakes holds no sriov.Dataplane")
	}
}
