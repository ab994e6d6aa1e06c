package vppapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Watcher = (*Dataplane)(nil)

// tapCheckInterval is how often tap mode asks for a check of every
// connection: a tap lives only in the workload's namespace, so its death
// raises no event in the node namespace.
const tapCheckInterval = 2 * time.Second

// Watch implements forwarder.Watcher. Veth sides (af_packet, AF_XDP) die
// with their node-side end, which the kernel reports (RTM_DELLINK with the
// connection's alias). Tap sides are checked periodically. A memif peer
// that disconnects may come back, so memif sides end at Close or expiry.
func (d *Dataplane) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	w := vwire.LinkWatch{Name: d.opts.Name, Logger: d.log}
	if d.opts.HostNetNS != "" {
		w.NS = d.hostNS
	}
	if d.opts.KernelMode != ModeTap {
		return vwire.WatchLinkDeaths(ctx, w, ch)
	}
	t := time.NewTicker(tapCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			vwire.TrySend(ch, forwarder.Death{})
		}
	}
}

// Alive implements forwarder.Watcher.
func (d *Dataplane) Alive(_ context.Context, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	s := &c.Client
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
	}
	if s.Mechanism.Type != forwarder.MechanismKernel {
		return true, "", nil
	}
	if d.opts.KernelMode == ModeTap {
		return vwire.PeerAlive(d.opts.Name, c, side)
	}
	return vwire.HostEndAlive(d.host, d.opts.Name, c, side)
}

// DisconnectSide implements forwarder.Watcher: it deletes one side's VPP
// interface, memif socket and veth, and takes the cross-connect off the
// surviving side, whose interface stays for NSM's heal. A later Connect
// builds the missing side again.
func (d *Dataplane) DisconnectSide(ctx context.Context, id string, side forwarder.SideKind) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	vc, err := d.conns()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	i := sideIndex(side)
	d.mu.Lock()
	st := d.live[id]
	var gone, other *vppIf
	var sock *uint32
	if st != nil {
		gone, other, sock = st.ifs[i], st.ifs[1-i], st.sock[i]
		st.ifs[i], st.sock[i] = nil, nil
	}
	d.mu.Unlock()
	if st == nil {
		found, err := dumpTagged(ctx, vc, tagPrefix(d.opts.Name))
		if err != nil {
			return fmt.Errorf("disconnect %s side of %q: %w", side, id, err)
		}
		otherKind := forwarder.SideClient
		if side == forwarder.SideClient {
			otherKind = forwarder.SideEndpoint
		}
		if v, ok := found[ifTag(d.opts.Name, id, side)]; ok {
			gone = &v
		}
		if v, ok := found[ifTag(d.opts.Name, id, otherKind)]; ok {
			other = &v
		}
	}
	var errs []error
	if other != nil {
		errs = append(errs, l2xcOff(ctx, vc, other.index), l3xcOff(ctx, vc, other.index))
	}
	if gone != nil {
		errs = append(errs, deleteIf(ctx, vc, *gone))
	}
	if sock != nil {
		errs = append(errs, delMemifSocket(ctx, vc, *sock))
	}
	dir := d.memifDir(id, side)
	if _, err := os.Stat(dir); err == nil {
		if sock == nil {
			errs = append(errs, d.delMemifSocketByPath(ctx, vc, filepath.Join(dir, "memif.sock")))
		}
		errs = append(errs, os.RemoveAll(dir))
	}
	l, err := d.host.LinkByName(vwire.HostIfName(d.opts.Name, id, side))
	if err == nil && l.Attrs().Alias == vwire.LinkAlias(d.opts.Name, id, side) {
		if err := d.host.LinkDel(l); err != nil && !vwire.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disconnect %s side of %q: %w", side, id, err)
	}
	return nil
}
