package kernel

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xconnect"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Watcher = (*Dataplane)(nil)

// watchRecvBuffer is the netlink socket buffer for link events: 200 veth
// pairs vanishing at once produce a few hundred KiB of notifications.
const watchRecvBuffer = 8 << 20

// resubscribeDelay spaces attempts to resubscribe after a socket error.
const resubscribeDelay = 100 * time.Millisecond

// Watch implements forwarder.Watcher. A veth pair dies with either of its
// ends: when a client's or an endpoint's namespace goes away (the last
// process holding it exits, or `ip netns del`) or the workload deletes its
// interface, the node-side end disappears and the kernel sends RTM_DELLINK
// in the host namespace, carrying the alias that names the connection and
// side. The same happens when the forwarder deletes the pair itself; the
// receiver tells the two apart with Alive under the connection's lock.
//
// If the event socket overflows or fails, events may have been lost: Watch
// sends a check-everything hint (empty ID) and subscribes again.
func (d *Dataplane) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	pending := false // a hint could not be delivered: send a check-all
	for {
		err := d.watchOnce(ctx, ch, &pending)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.log.WarnContext(ctx, "link event watch interrupted; checking every connection", "error", err)
		pending = true
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(resubscribeDelay):
		}
	}
}

func (d *Dataplane) watchOnce(ctx context.Context, ch chan<- forwarder.Death, pending *bool) error {
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
	if !d.hostSelf {
		ns := d.hostNS
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
		*pending = !trySend(ch, forwarder.Death{})
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
			id, side, ok := vwire.ParseAlias(d.opts.Name, u.Link.Attrs().Alias)
			if !ok {
				continue
			}
			reason := forwarder.ReasonClientInterfaceGone
			if side == forwarder.SideEndpoint {
				reason = forwarder.ReasonEndpointInterfaceGone
			}
			if *pending {
				*pending = !trySend(ch, forwarder.Death{})
			}
			if !trySend(ch, forwarder.Death{ID: id, Side: side, Reason: reason}) {
				*pending = true
			}
		}
	}
}

// trySend delivers d without blocking the event reader.
func trySend(ch chan<- forwarder.Death, d forwarder.Death) bool {
	select {
	case ch <- d:
		return true
	default:
		return false
	}
}

// Alive implements forwarder.Watcher: a side is alive while its node-side
// veth end exists with our alias (a veth end cannot outlive its peer). When
// it is gone, the side's namespace tells the reason.
func (d *Dataplane) Alive(_ context.Context, c *Conn, side forwarder.SideKind) (bool, string, error) {
	l, err := d.host.LinkByName(vwire.HostIfName(d.opts.Name, c.ID, side))
	switch {
	case err == nil && l.Attrs().Alias == vwire.LinkAlias(d.opts.Name, c.ID, side):
		return true, "", nil
	case err != nil && !vwire.IsNotFound(err):
		return false, "", fmt.Errorf("alive %q %s: %w", c.ID, side, err)
	}
	s := &c.Client
	netnsGone, ifGone := forwarder.ReasonClientNetNSGone, forwarder.ReasonClientInterfaceGone
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
		netnsGone, ifGone = forwarder.ReasonEndpointNetNSGone, forwarder.ReasonEndpointInterfaceGone
	}
	ns, err := vwire.ResolveNetNS(side, s.Mechanism)
	if err != nil {
		return false, netnsGone, nil
	}
	_ = ns.Close()
	return false, ifGone, nil
}

// DisconnectSide implements forwarder.Watcher. The cross-connect program
// stays attached to the surviving side's node end, where it drops what the
// survivor sends (its target is gone) instead of letting it reach the node's
// own stack; a later Connect reinstalls it toward the new peer.
func (d *Dataplane) DisconnectSide(_ context.Context, id string, side forwarder.SideKind) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	l, err := d.host.LinkByName(vwire.HostIfName(d.opts.Name, id, side))
	switch {
	case err == nil && l.Attrs().Alias == vwire.LinkAlias(d.opts.Name, id, side):
		if err := d.deleter.delete(l); err != nil {
			return fmt.Errorf("disconnect %s side of %q: %w", side, id, err)
		}
	case err != nil && !vwire.IsNotFound(err):
		return fmt.Errorf("disconnect %s side of %q: %w", side, id, err)
	}
	pin := xconnect.LinkPinName(side == forwarder.SideEndpoint)
	if err := os.Remove(filepath.Join(connPinDir(d.opts.PinDir, d.opts.Name, id), pin)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("disconnect %s side of %q: unpin: %w", side, id, err)
	}
	return nil
}
