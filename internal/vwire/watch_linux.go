package vwire

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// watchRecvBuffer is the netlink socket buffer for link events: 200 veth
// pairs vanishing at once produce a few hundred KiB of notifications.
const watchRecvBuffer = 8 << 20

// resubscribeDelay spaces attempts to resubscribe after a socket error.
const resubscribeDelay = 100 * time.Millisecond

// LinkWatch says where WatchLinkDeaths listens and whose links it reports.
type LinkWatch struct {
	// Name is the forwarder's name: only links with its aliases count.
	Name string
	// NS is the namespace of the node-side veth ends; the zero value or a
	// closed handle means the process's own.
	NS netns.NsHandle
	// Logger receives interruptions; nil discards.
	Logger *slog.Logger
}

// WatchLinkDeaths sends death hints on ch until ctx ends. A veth pair dies
// with either of its ends: when a workload's namespace goes away (the last
// process holding it exits, or `ip netns del`) or the workload deletes its
// interface, the node-side end disappears and the kernel sends RTM_DELLINK
// in the node namespace, carrying the alias that names the connection and
// side. The same happens when the forwarder deletes the pair itself; the
// receiver tells the two apart with Watcher.Alive under the connection's
// lock.
//
// If the event socket overflows or fails, events may have been lost: it
// sends a check-everything hint (empty ID) and subscribes again. It never
// blocks on ch: an undelivered hint becomes a check-everything hint.
func WatchLinkDeaths(ctx context.Context, w LinkWatch, ch chan<- forwarder.Death) error {
	log := w.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pending := false // a hint could not be delivered: send a check-all
	for {
		err := w.once(ctx, ch, &pending)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.WarnContext(ctx, "link event watch interrupted; checking every connection", "error", err)
		pending = true
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(resubscribeDelay):
		}
	}
}

func (w LinkWatch) once(ctx context.Context, ch chan<- forwarder.Death, pending *bool) error {
	updates := make(chan netlink.LinkUpdate, 4096)
	done := make(chan struct{})
	errc := make(chan error, 1)
	opts := netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
		ReceiveBufferSize:      watchRecvBuffer,
		ReceiveBufferForceSize: true,
	}
	// 0 is the zero value (a LinkWatch that names no namespace), not a
	// namespace: setns on whatever fd 0 is fails, and the watch would never
	// start.
	if w.NS.IsOpen() && w.NS != 0 {
		ns := w.NS
		opts.Namespace = &ns
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return fmt.Errorf("subscribe to link events: %w", err)
	}
	defer func() {
		// Closing done closes the socket; the library's reader then closes
		// updates, possibly after one last send: drain so it never blocks.
		close(done)
		for range updates {
		}
	}()
	if *pending {
		// Whatever happened before this subscription is now covered by a
		// full check.
		*pending = !TrySend(ch, forwarder.Death{})
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("link event stream closed")
			}
			if u.Header.Type != unix.RTM_DELLINK || u.Link == nil {
				continue
			}
			id, side, ok := ParseAlias(w.Name, u.Link.Attrs().Alias)
			if !ok {
				continue
			}
			if *pending {
				*pending = !TrySend(ch, forwarder.Death{})
			}
			if !TrySend(ch, forwarder.Death{ID: id, Side: side, Reason: Reasons(side).InterfaceGone}) {
				*pending = true
			}
		}
	}
}

// TrySend delivers d without blocking the event reader.
func TrySend(ch chan<- forwarder.Death, d forwarder.Death) bool {
	select {
	case ch <- d:
		return true
	default:
		return false
	}
}

// SideReasons are the death reasons of one side.
type SideReasons struct{ NetNSGone, InterfaceGone string }

// Reasons returns side's death reasons.
func Reasons(side forwarder.SideKind) SideReasons {
	if side == forwarder.SideEndpoint {
		return SideReasons{forwarder.ReasonEndpointNetNSGone, forwarder.ReasonEndpointInterfaceGone}
	}
	return SideReasons{forwarder.ReasonClientNetNSGone, forwarder.ReasonClientInterfaceGone}
}

// HostEndAlive reports whether side of c still has its node-side veth end
// (in host's namespace, with the forwarder's alias): a veth end cannot
// outlive its peer. When it is gone, the side's namespace tells the reason.
func HostEndAlive(host *netlink.Handle, name string, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	l, err := host.LinkByName(HostIfName(name, c.ID, side))
	switch {
	case err == nil && l.Attrs().Alias == LinkAlias(name, c.ID, side):
		return true, "", nil
	case err != nil && !IsNotFound(err):
		return false, "", fmt.Errorf("alive %q %s: %w", c.ID, side, err)
	}
	return false, goneReason(c, side), nil
}

// goneReason tells why a side whose interface is gone died: its namespace
// went away, or only the interface.
func goneReason(c *forwarder.Conn, side forwarder.SideKind) string {
	s := &c.Client
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
	}
	r := Reasons(side)
	ns, err := ResolveNetNS(side, s.Mechanism)
	if err != nil {
		return r.NetNSGone
	}
	_ = ns.Close()
	return r.InterfaceGone
}

// PeerAlive reports whether side of c still has its interface inside the
// workload namespace (a tap, which has no node-side end), recognised by
// the forwarder's alias.
func PeerAlive(name string, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	s := &c.Client
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
	}
	r := Reasons(side)
	ns, err := ResolveNetNS(side, s.Mechanism)
	if err != nil {
		return false, r.NetNSGone, nil
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false, "", fmt.Errorf("alive %q %s: %w", c.ID, side, err)
	}
	defer h.Close()
	l, err := h.LinkByName(s.Mechanism.Param(forwarder.ParamIfName))
	switch {
	case err == nil && l.Attrs().Alias == LinkAlias(name, c.ID, side):
		return true, "", nil
	case err != nil && !IsNotFound(err):
		return false, "", fmt.Errorf("alive %q %s: %w", c.ID, side, err)
	}
	return false, r.InterfaceGone, nil
}
