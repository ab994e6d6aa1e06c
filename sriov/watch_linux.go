package sriov

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nsmfwd/nsmfwd/forwarder"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// DefaultWatchInterval is how often Watch sweeps the connections' sides
// unless Options say otherwise.
const DefaultWatchInterval = 500 * time.Millisecond

var _ forwarder.Watcher = (*Dataplane)(nil)

// Watch implements forwarder.Watcher. A VF netdev whose namespace dies is
// moved back to the initial namespace by the kernel, still carrying our
// alias: when the host namespace is that one, the RTM_NEWLINK is the hint.
// A sweep every WatchInterval catches the rest (a host namespace that is
// not the initial one, a client that deleted its interface): VFs are few
// (a NIC has at most a few hundred), so checking each is cheap.
func (d *Dataplane) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	interval := d.opts.WatchInterval
	if interval <= 0 {
		interval = DefaultWatchInterval
	}
	updates := make(chan netlink.LinkUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		Namespace: &d.hostNS,
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("sriov watch: subscribe: %w", err)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	send := func(h forwarder.Death) {
		select {
		case ch <- h:
		default:
			select { // full: ask for a check of everything instead
			case ch <- forwarder.Death{}:
			default:
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-subErr:
			return fmt.Errorf("sriov watch: %w", err)
		case u, ok := <-updates:
			if !ok {
				return errors.New("sriov watch: link subscription closed")
			}
			if u.Header.Type != netlinkNewLink {
				continue
			}
			// The kernel dataplane's veth ends carry aliases of the same
			// form: only VFs this dataplane holds count.
			if id, side, ok := vwire.ParseAlias(d.opts.Name, u.Attrs().Alias); ok && d.pool.side(id, side) != nil {
				reason := forwarder.ReasonClientNetNSGone
				if side == forwarder.SideEndpoint {
					reason = forwarder.ReasonEndpointNetNSGone
				}
				send(forwarder.Death{ID: id, Side: side, Reason: reason})
			}
		case <-tick.C:
			d.sweep(ctx, send)
		}
	}
}

// netlinkNewLink is RTM_NEWLINK.
const netlinkNewLink = 16

// sweep sends a hint for every side found dead.
func (d *Dataplane) sweep(ctx context.Context, send func(forwarder.Death)) {
	for _, id := range d.pool.ownerIDs() {
		for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			_, rec, ok := d.pool.sideRecord(id, side)
			if !ok {
				continue
			}
			if alive, reason := d.recordAlive(ctx, rec); !alive {
				send(forwarder.Death{ID: id, Side: side, Reason: reason})
			}
		}
	}
}

// Alive implements forwarder.Watcher: a KERNEL side is alive while its
// namespace exists and holds the VF netdev under our alias. A VFIO client
// has no netdev to watch; its token's expiry ends it.
func (d *Dataplane) Alive(ctx context.Context, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	_, rec, ok := d.pool.sideRecord(c.ID, side)
	if !ok {
		return false, reasonGone(side, false), nil
	}
	alive, reason := d.recordAlive(ctx, rec)
	return alive, reason, nil
}

func reasonGone(side forwarder.SideKind, netnsGone bool) string {
	switch {
	case side == forwarder.SideClient && netnsGone:
		return forwarder.ReasonClientNetNSGone
	case side == forwarder.SideClient:
		return forwarder.ReasonClientInterfaceGone
	case netnsGone:
		return forwarder.ReasonEndpointNetNSGone
	default:
		return forwarder.ReasonEndpointInterfaceGone
	}
}

func (d *Dataplane) recordAlive(_ context.Context, rec record) (bool, string) {
	if rec.Use != UseKernel || rec.NetNS == "" {
		return true, ""
	}
	ref, err := forwarder.ParseNetNSURL(rec.NetNS)
	if err != nil {
		return true, ""
	}
	ns, err := inetns.Resolve(ref)
	if err != nil {
		if forwarder.CodeOf(err) == forwarder.CodeNotFound {
			return false, reasonGone(rec.Side, true)
		}
		return true, "" // unknown: not a death
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return true, ""
	}
	defer h.Close()
	l, err := h.LinkByName(rec.IfName)
	if err != nil && vwire.IsNotFound(err) {
		return false, reasonGone(rec.Side, false)
	}
	if err == nil && l.Attrs().Alias != vwire.LinkAlias(d.opts.Name, rec.ConnID, rec.Side) {
		return false, reasonGone(rec.Side, false)
	}
	return true, ""
}

// DisconnectSide implements forwarder.Watcher: the side's VF is restored
// and freed; the other side keeps its VF (and the VLAN that a new endpoint
// VF on the same PF will share).
func (d *Dataplane) DisconnectSide(ctx context.Context, id string, side forwarder.SideKind) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	v := d.pool.side(id, side)
	if v == nil {
		return nil
	}
	if side == forwarder.SideClient && v.owner.NetNS != "" && netNSGone(v.owner.NetNS) {
		d.pool.figures.reclaimed.Add(1)
	}
	if err := d.restoreGroup(ctx, v); err != nil {
		return fmt.Errorf("disconnect %q %s: %w", id, side, err)
	}
	return nil
}
