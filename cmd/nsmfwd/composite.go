package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// composite serves NSM_DATAPLANE=kernel+sriov: a connection goes to the
// SR-IOV dataplane when its client asks for a VF (VFIO, or KERNEL naming
// an SR-IOV pool in its sriovToken or tokenID parameter), to the kernel
// dataplane otherwise. Its endpoint side is KERNEL either way.
type composite struct {
	kernel, sriov forwarder.Dataplane

	mu    sync.Mutex
	route map[string]forwarder.Dataplane // live connections' dataplane
}

var (
	_ forwarder.Dataplane = (*composite)(nil)
	_ forwarder.Watcher   = (*composite)(nil)
)

// newCompositeDataplane builds the kernel and the SR-IOV dataplanes
// (NSM_DATAPLANE=kernel+sriov).
func newCompositeDataplane(ctx context.Context, cfg Config, log *slog.Logger) (forwarder.Dataplane, error) {
	kdp, err := kernel.New(ctx, kernel.Options{
		Name:   cfg.Name,
		PinDir: cfg.BPFPinDir,
		Attach: cfg.TCAttach,
		Logger: log.With("dataplane", "kernel"),
	})
	if err != nil {
		return nil, err
	}
	sdp, err := newSRIOVDataplane(ctx, cfg, log)
	if err != nil {
		_ = kdp.Close()
		return nil, err
	}
	return newComposite(kdp, sdp), nil
}

func newComposite(k, s forwarder.Dataplane) *composite {
	return &composite{kernel: k, sriov: s, route: map[string]forwarder.Dataplane{}}
}

// wantsVF reports whether a client mechanism asks for a VF.
func wantsVF(m forwarder.Mechanism) bool {
	return m.Type == sriov.MechanismVFIO || m.Param(sriov.ParamSRIOVToken) != "" || m.Param(sriov.ParamTokenID) != ""
}

func (c *composite) pick(m forwarder.Mechanism) forwarder.Dataplane {
	if wantsVF(m) {
		return c.sriov
	}
	return c.kernel
}

func (c *composite) Name() string { return "kernel+sriov" }

func (c *composite) Mechanisms(side forwarder.SideKind) []string {
	out := slices.Clone(c.kernel.Mechanisms(side))
	for _, m := range c.sriov.Mechanisms(side) {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

// Check sends the client side to its dataplane; both check an endpoint's
// KERNEL mechanism the same way (namespace, free name), so the kernel
// dataplane does.
func (c *composite) Check(ctx context.Context, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	if side == forwarder.SideClient {
		return c.pick(m).Check(ctx, id, side, m)
	}
	return c.kernel.Check(ctx, id, side, m)
}

// Connect builds c on its dataplane; a connection that changed dataplane
// (a refresh now asking for a VF, say) is removed from the other first.
func (c *composite) Connect(ctx context.Context, conn *forwarder.Conn) error {
	dp := c.pick(conn.Client.Mechanism)
	c.mu.Lock()
	prev := c.route[conn.ID]
	c.mu.Unlock()
	if prev != nil && prev != dp {
		if err := prev.Disconnect(ctx, conn.ID); err != nil {
			return err
		}
	}
	if err := dp.Connect(ctx, conn); err != nil {
		return err
	}
	c.mu.Lock()
	c.route[conn.ID] = dp
	c.mu.Unlock()
	return nil
}

// Disconnect asks both: either may hold the connection (after a restart,
// before Reconcile, the route is not known).
func (c *composite) Disconnect(ctx context.Context, id string) error {
	err := errors.Join(c.sriov.Disconnect(ctx, id), c.kernel.Disconnect(ctx, id))
	if err == nil {
		c.mu.Lock()
		delete(c.route, id)
		c.mu.Unlock()
	}
	return err
}

func (c *composite) Reconcile(ctx context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	var kw, sw []*forwarder.Conn
	c.mu.Lock()
	for _, conn := range wanted {
		dp := c.pick(conn.Client.Mechanism)
		c.route[conn.ID] = dp
		if dp == c.sriov {
			sw = append(sw, conn)
		} else {
			kw = append(kw, conn)
		}
	}
	c.mu.Unlock()
	kr, kerr := c.kernel.Reconcile(ctx, kw)
	sr, serr := c.sriov.Reconcile(ctx, sw)
	out := forwarder.ReconcileResult{
		Adopted: append(kr.Adopted, sr.Adopted...),
		Rebuilt: append(kr.Rebuilt, sr.Rebuilt...),
		Removed: append(kr.Removed, sr.Removed...),
	}
	for _, f := range []map[string]error{kr.Failed, sr.Failed} {
		for id, err := range f {
			if out.Failed == nil {
				out.Failed = map[string]error{}
			}
			out.Failed[id] = err
		}
	}
	return out, errors.Join(kerr, serr)
}

func (c *composite) Stats(ctx context.Context, id string) (forwarder.Stats, error) {
	c.mu.Lock()
	dp := c.route[id]
	c.mu.Unlock()
	if dp != nil {
		return dp.Stats(ctx, id)
	}
	st, err := c.sriov.Stats(ctx, id)
	if forwarder.CodeOf(err) == forwarder.CodeNotFound {
		return c.kernel.Stats(ctx, id)
	}
	return st, err
}

func (c *composite) Ready(ctx context.Context) error {
	return errors.Join(c.kernel.Ready(ctx), c.sriov.Ready(ctx))
}

func (c *composite) Close() error {
	return errors.Join(c.kernel.Close(), c.sriov.Close())
}

// Watch runs both dataplanes' watchers into ch; it returns when ctx ends
// or the first of them fails.
func (c *composite) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var watchers []forwarder.Watcher
	for _, dp := range []forwarder.Dataplane{c.kernel, c.sriov} {
		if w, ok := dp.(forwarder.Watcher); ok {
			watchers = append(watchers, w)
		}
	}
	if len(watchers) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	errc := make(chan error, len(watchers))
	for _, w := range watchers {
		go func() { errc <- w.Watch(ctx, ch) }()
	}
	err := <-errc
	cancel()
	for range len(watchers) - 1 {
		<-errc
	}
	return err
}

func (c *composite) Alive(ctx context.Context, conn *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	w, ok := c.pick(conn.Client.Mechanism).(forwarder.Watcher)
	if !ok {
		return true, "", nil
	}
	return w.Alive(ctx, conn, side)
}

func (c *composite) DisconnectSide(ctx context.Context, id string, side forwarder.SideKind) error {
	c.mu.Lock()
	dp := c.route[id]
	c.mu.Unlock()
	var errs []error
	for _, d := range []forwarder.Dataplane{c.sriov, c.kernel} {
		if dp != nil && d != dp {
			continue
		}
		if w, ok := d.(forwarder.Watcher); ok {
			errs = append(errs, w.DisconnectSide(ctx, id, side))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", c.Name(), err)
	}
	return nil
}

// sriovOf returns the SR-IOV dataplane inside dp, if any.
func sriovOf(dp forwarder.Dataplane) *sriov.Dataplane {
	switch d := dp.(type) {
	case *sriov.Dataplane:
		return d
	case *sriovWithPlugins:
		return d.Dataplane
	case *composite:
		return sriovOf(d.sriov)
	}
	return nil
}
