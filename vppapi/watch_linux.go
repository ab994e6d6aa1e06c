package vppapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/memif"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Watcher = (*Dataplane)(nil)

// tapCheckInterval is how often tap mode asks for a check of every
// connection: a tap lives only in the workload's namespace, so its death
// raises no link event in the node namespace, and VPP's tap keeps that
// namespace alive. vwire.NetNSWatch hears its pin go or its process exit;
// the check catches the rest (a tap deleted by its workload).
const tapCheckInterval = 2 * time.Second

// memifCheckInterval is how often memif sides are checked while there are
// any, and memifGrace how long a memif that was connected must stay
// disconnected to count as dead: a peer's VPP that restarts reconnects
// within it.
const (
	memifCheckInterval = 250 * time.Millisecond
	memifGrace         = 500 * time.Millisecond
)

// Watch implements forwarder.Watcher. Veth sides (af_packet, AF_XDP) die
// with their node-side end, which the kernel reports (RTM_DELLINK with the
// connection's alias). Tap sides are checked periodically, and so are
// memif sides while there are any: a memif whose peer was connected and
// has been gone for memifGrace is dead. For tap sides, the removal of
// their namespaces' pins and the exit of the process a /proc/PID URL names
// are watched too (vwire.NetNSWatch).
func (d *Dataplane) Watch(ctx context.Context, ch chan<- forwarder.Death) error {
	go d.watchMemif(ctx, ch)
	w := vwire.LinkWatch{Name: d.opts.Name, Logger: d.log}
	if d.opts.HostNetNS != "" {
		w.NS = d.hostNS
	}
	if d.opts.KernelMode != ModeTap {
		return vwire.WatchLinkDeaths(ctx, w, ch)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { _ = d.nsWatch.Run(ctx, ch) })
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
func (d *Dataplane) Alive(ctx context.Context, c *forwarder.Conn, side forwarder.SideKind) (bool, string, error) {
	s := &c.Client
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
	}
	if s.Mechanism.Type == MechanismMemif {
		return d.memifAlive(ctx, c.ID, side)
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
		errs = append(errs, d.deleteIf(ctx, vc, *gone))
		if isTunnel(gone) {
			errs = append(errs, d.syncPinholes(ctx, vc))
		}
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

// memifWatch is what the dataplane remembers of its memif interfaces'
// peers, by VPP interface index.
type memifWatch struct {
	mu        sync.Mutex
	at        time.Time // of the snapshot
	up        map[interface_types.InterfaceIndex]bool
	wasUp     map[interface_types.InterfaceIndex]bool
	downSince map[interface_types.InterfaceIndex]time.Time
	// counted holds the memifs whose counters were read once (see
	// memifHadPeer).
	counted map[interface_types.InterfaceIndex]bool
}

// memifHadPeer reports, once per memif, whether VPP has received packets
// on it: a memif found disconnected by a forwarder that did not see it
// connected (one that restarted meanwhile) had a peer if it did, and that
// peer is gone. VPP's counters outlive the forwarder; w.mu is held.
func (d *Dataplane) memifHadPeer(ctx context.Context, w *memifWatch, idx interface_types.InterfaceIndex) bool {
	if d.opts.Stats == nil || w.counted[idx] {
		return false
	}
	if w.counted == nil {
		w.counted = map[interface_types.InterfaceIndex]bool{}
	}
	w.counted[idx] = true
	rx, _, err := d.opts.Stats.InterfaceCounters(ctx, uint32(idx))
	return err == nil && rx[uint32(idx)].Packets > 0
}

// watchMemif asks for a check of every connection every
// memifCheckInterval while any connection has a memif side.
func (d *Dataplane) watchMemif(ctx context.Context, ch chan<- forwarder.Death) {
	t := time.NewTicker(memifCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if d.hasMemif() {
				vwire.TrySend(ch, forwarder.Death{})
			}
		}
	}
}

func (d *Dataplane) hasMemif() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, st := range d.live {
		if st.sock[0] != nil || st.sock[1] != nil {
			return true
		}
	}
	return false
}

// memifAlive reports whether a memif side's peer is there, or has not
// been for less than memifGrace, or never was (the workload connects after
// the Request returns). One memif dump serves every check of a round.
func (d *Dataplane) memifAlive(ctx context.Context, id string, side forwarder.SideKind) (bool, string, error) {
	d.mu.RLock()
	st := d.live[id]
	var v *vppIf
	if st != nil {
		v = st.ifs[sideIndex(side)]
	}
	d.mu.RUnlock()
	if v == nil {
		return true, "", nil
	}
	vc, err := d.conns()
	if err != nil {
		return true, "", nil // VPP is being replaced: nothing to conclude
	}
	w := &d.memifs
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if now.Sub(w.at) > memifCheckInterval/2 {
		ds, err := Dump[*memif.MemifDetails](ctx, vc, &memif.MemifDump{})
		if err != nil {
			return false, "", fmt.Errorf("alive %q %s: %w", id, side, err)
		}
		w.up = map[interface_types.InterfaceIndex]bool{}
		for _, x := range ds {
			w.up[x.SwIfIndex] = x.Flags&interface_types.IF_STATUS_API_FLAG_LINK_UP != 0
		}
		w.at = now
		if w.wasUp == nil {
			w.wasUp, w.downSince = map[interface_types.InterfaceIndex]bool{}, map[interface_types.InterfaceIndex]time.Time{}
		}
	}
	switch up, known := w.up[v.index]; {
	case !known:
		return true, "", nil // not a memif (any more): Close's business
	case up:
		if !w.wasUp[v.index] && d.opts.RxMode == RxModeInterrupt {
			// The peer connected: VPP made its queues, polled.
			if err := setRxMode(ctx, vc, v.index, RxModeInterrupt); err != nil {
				d.log.WarnContext(ctx, "memif stays polled", "conn_id", id, "error", err)
			}
		}
		w.wasUp[v.index] = true
		delete(w.downSince, v.index)
		return true, "", nil
	case !w.wasUp[v.index] && !d.memifHadPeer(ctx, w, v.index):
		return true, "", nil
	}
	w.wasUp[v.index] = true
	since, ok := w.downSince[v.index]
	if !ok {
		w.downSince[v.index] = now
		return true, "", nil
	}
	if now.Sub(since) < memifGrace {
		return true, "", nil
	}
	delete(w.wasUp, v.index)
	delete(w.downSince, v.index)
	return false, vwire.Reasons(side).InterfaceGone, nil
}
