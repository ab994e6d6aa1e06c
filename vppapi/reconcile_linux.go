package vppapi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"go.fd.io/govpp/binapi/memif"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

const reconcileWorkers = 8

// delMemifSocketByPath removes VPP's registration of a socket file, or of
// the abstract socket with that name.
func (d *Dataplane) delMemifSocketByPath(ctx context.Context, vc *Conn, path string) error {
	socks, err := Dump[*memif.MemifSocketFilenameDetails](ctx, vc, &memif.MemifSocketFilenameDump{})
	if err != nil {
		return err
	}
	for _, s := range socks {
		if s.SocketFilename == path || abstractName(s.SocketFilename) == path {
			return delMemifSocket(ctx, vc, s.SocketID)
		}
	}
	return nil
}

// Reconcile implements forwarder.Dataplane: it dumps VPP's interfaces,
// keeps and completes those tagged with wanted connections, and deletes
// every other object the forwarder name owns: tagged VPP interfaces,
// memif sockets under its directory, veth pairs with its alias.
func (d *Dataplane) Reconcile(ctx context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	res := forwarder.ReconcileResult{Failed: map[string]error{}}
	vc, err := d.conns()
	if err != nil {
		return res, err
	}
	found, err := dumpTagged(ctx, vc, tagPrefix(d.opts.Name))
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	want := map[string]bool{}
	wantTags := map[string]bool{}
	for _, c := range wanted {
		want[c.ID] = true
		wantTags[ifTag(d.opts.Name, c.ID, forwarder.SideClient)] = true
		wantTags[ifTag(d.opts.Name, c.ID, forwarder.SideEndpoint)] = true
	}
	forwarder.AdoptEach(&res, wanted, reconcileWorkers, func(c *forwarder.Conn) (bool, error) {
		unlock := d.locks.Lock(c.ID)
		defer unlock()
		changed, err := d.connect(ctx, vc, c, found)
		if err != nil {
			if rerr := d.remove(ctx, vc, c.ID, found); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return changed, err
	})
	var errs []error
	for tag, v := range found {
		if wantTags[tag] || tag == uplinkTag(d.opts.Name) || d.isVLANTag(tag) {
			continue // VLAN domains are pruned below, by their members
		}
		if err := deleteIf(ctx, vc, v); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Removed = append(res.Removed, tag)
	}
	// Veth pairs whose connection is not wanted.
	links, err := vwire.ListLinks(d.host)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		id, _, ok := vwire.ParseAlias(d.opts.Name, l.Attrs().Alias)
		if !ok || want[id] {
			continue
		}
		if err := d.host.LinkDel(l); err != nil && !vwire.IsNotFound(err) {
			errs = append(errs, err)
			continue
		}
		res.Removed = append(res.Removed, l.Attrs().Name)
	}
	// Memif sockets and directories not in use.
	keepDirs := map[string]bool{}
	for _, c := range wanted {
		for _, k := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			keepDirs[d.memifDir(c.ID, k)] = true
		}
	}
	root := filepath.Join(d.opts.MemifDir, d.opts.Name)
	socks, err := Dump[*memif.MemifSocketFilenameDetails](ctx, vc, &memif.MemifSocketFilenameDump{})
	if err != nil {
		errs = append(errs, err)
	}
	keepAbstract := map[string]bool{}
	for _, c := range wanted {
		for _, k := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			keepAbstract[d.memifAbstract(c.ID, k)] = true
		}
	}
	for _, s := range socks {
		if name := abstractName(s.SocketFilename); name != "" {
			if strings.HasPrefix(name, d.memifAbstractPrefix()) && !keepAbstract[name] {
				errs = append(errs, delMemifSocket(ctx, vc, s.SocketID))
			}
			continue
		}
		dir := filepath.Dir(s.SocketFilename)
		if filepath.Dir(dir) != root || keepDirs[dir] {
			continue
		}
		errs = append(errs, delMemifSocket(ctx, vc, s.SocketID))
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		dir := filepath.Join(root, e.Name())
		if !keepDirs[dir] {
			errs = append(errs, os.RemoveAll(dir))
			res.Removed = append(res.Removed, dir)
		}
	}
	errs = append(errs, d.pruneVLAN(ctx, vc), d.syncPinholes(ctx, vc))
	if len(res.Failed) == 0 {
		res.Failed = nil
	}
	return res, errors.Join(errs...)
}

// Rebind replaces the VPP connection after VPP restarted (or the
// connection to an external VPP was re-established) and replays every
// connection this process built: VPP lost its objects, the kernel kept
// the veth pairs, so each connection is rebuilt in place. It returns the
// connections it could not replay.
func (d *Dataplane) Rebind(ctx context.Context, vc *Conn) map[string]error {
	d.mu.Lock()
	d.conn = vc
	var conns []*forwarder.Conn
	for id, st := range d.live {
		conns = append(conns, st.conn)
		d.live[id] = &connState{conn: st.conn} // VPP's objects are gone
	}
	d.mu.Unlock()
	failed := map[string]error{}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
		// sem bounds the replay's concurrency like a Reconcile's.
		sem = make(chan struct{}, reconcileWorkers)
	)
	found, err := dumpTagged(ctx, vc, tagPrefix(d.opts.Name))
	if err != nil {
		found = nil
	}
	for _, c := range conns {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			unlock := d.locks.Lock(c.ID)
			defer unlock()
			if _, err := d.connect(ctx, vc, c.Clone(), found); err != nil {
				mu.Lock()
				failed[c.ID] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		d.log.ErrorContext(ctx, "replay after VPP restart incomplete", "failed", len(failed), "replayed", len(conns)-len(failed))
	} else {
		d.log.InfoContext(ctx, "replayed connections after VPP restart", "count", len(conns))
	}
	return failed
}

// Stats implements forwarder.Dataplane from VPP's interface counters:
// what VPP received from the client side is what the client sent.
func (d *Dataplane) Stats(ctx context.Context, id string) (forwarder.Stats, error) {
	d.mu.RLock()
	st := d.live[id]
	d.mu.RUnlock()
	if st == nil || st.ifs[0] == nil || st.ifs[1] == nil {
		return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "connection %q: no datapath", id)
	}
	if d.opts.Stats == nil {
		return forwarder.Stats{}, nil
	}
	a, b := uint32(st.ifs[0].index), uint32(st.ifs[1].index)
	rx, drops, err := d.opts.Stats.InterfaceCounters(ctx, a, b)
	if err != nil {
		return forwarder.Stats{}, fmt.Errorf("stats %q: %w", id, err)
	}
	out := forwarder.Stats{ClientToEndpoint: rx[a], EndpointToClient: rx[b]}
	out.ClientToEndpoint.Drops += drops[a].Drops
	out.EndpointToClient.Drops += drops[b].Drops
	return out, nil
}
