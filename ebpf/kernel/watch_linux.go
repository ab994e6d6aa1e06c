package kernel

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nsmfwd/nsmfwd/ebpf/xconnect"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Watcher = (*Dataplane)(nil)

// Watch implements forwarder.Watcher with RTM_DELLINK of the node-side veth
// ends (vwire.WatchLinkDeaths).
func (d *Dataplane) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	w := vwire.LinkWatch{Name: d.opts.Name, Logger: d.log}
	if !d.hostSelf {
		w.NS = d.hostNS
	}
	return vwire.WatchLinkDeaths(ctx, w, ch)
}

// Alive implements forwarder.Watcher: a side is alive while its node-side
// veth end exists with our alias.
func (d *Dataplane) Alive(_ context.Context, c *Conn, side forwarder.SideKind) (bool, string, error) {
	if side == forwarder.SideEndpoint && c.Endpoint.Mechanism.Type == forwarder.MechanismVLAN {
		// The physical network has no namespace to die; the domain is
		// rebuilt by the next refresh if someone removed it.
		return true, "", nil
	}
	return vwire.HostEndAlive(d.host, d.opts.Name, c, side)
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
