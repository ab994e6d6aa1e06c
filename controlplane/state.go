package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// record is what the Store keeps per connection: enough to answer a
// refresh, Monitor and Close after a restart, and to let the dataplane adopt
// the vWire.
type record struct {
	// Conn is the client-facing connection in our frame (protojson).
	Conn json.RawMessage `json:"conn"`
	// NextHop is the connection the next hop returned (protojson).
	NextHop json.RawMessage `json:"next_hop"`
	// Forwarder is the vWire as the dataplane built it.
	Forwarder *forwarder.Conn `json:"forwarder"`
	// Owner is the identity that created the connection (entry.owner).
	Owner string `json:"owner,omitempty"`
}

func (s *Server) persist(id string, e *entry) error {
	if s.store == nil {
		return nil
	}
	c, err := protojson.Marshal(e.conn)
	if err != nil {
		return fmt.Errorf("state encode %q: %w", id, err)
	}
	n, err := protojson.Marshal(e.next)
	if err != nil {
		return fmt.Errorf("state encode %q: %w", id, err)
	}
	data, err := json.Marshal(record{Conn: c, NextHop: n, Forwarder: e.fc, Owner: e.owner})
	if err != nil {
		return fmt.Errorf("state encode %q: %w", id, err)
	}
	return s.store.Put(id, data)
}

// deleteRecord removes id's record; a failure is logged (and returned for
// callers that care): a stale record is dropped at the next start anyway
// once it expires.
func (s *Server) deleteRecord(log *slog.Logger, id string) error {
	if s.store == nil {
		return nil
	}
	err := s.store.Delete(id)
	if err != nil {
		log.Warn("state delete", "error", err)
	}
	return err
}

func decodeRecord(id string, data []byte) (*entry, error) {
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("state decode %q: %w", id, err)
	}
	e := &entry{conn: &networkservice.Connection{}, next: &networkservice.Connection{}, fc: r.Forwarder, owner: r.Owner}
	if err := protojson.Unmarshal(r.Conn, e.conn); err != nil {
		return nil, fmt.Errorf("state decode %q: conn: %w", id, err)
	}
	if err := protojson.Unmarshal(r.NextHop, e.next); err != nil {
		return nil, fmt.Errorf("state decode %q: next_hop: %w", id, err)
	}
	if e.fc == nil || e.fc.ID != id || e.conn.GetId() != id {
		return nil, fmt.Errorf("state decode %q: record names another connection", id)
	}
	return e, nil
}

// restore loads the stored connections, drops expired and undecodable ones,
// asks the dataplane to reconcile with the rest and puts the survivors back
// in the table with their expiry timers.
func (s *Server) restore(ctx context.Context) error {
	loaded := map[string]*entry{}
	var drop []*entry
	if s.store != nil {
		recs, err := s.store.Load()
		if err != nil {
			return err
		}
		now := time.Now()
		for id, data := range recs {
			log := s.log.With("conn_id", id)
			e, err := decodeRecord(id, data)
			if err != nil {
				log.WarnContext(ctx, "dropping unreadable state record", "error", err)
				_ = s.deleteRecord(log, id)
				continue
			}
			e.log = log
			if !e.fc.Expires.After(now) {
				log.InfoContext(ctx, "dropping expired connection", "expired", e.fc.Expires)
				drop = append(drop, e)
				continue
			}
			loaded[id] = e
		}
	}

	wanted := make([]*forwarder.Conn, 0, len(loaded))
	for _, id := range slices.Sorted(maps.Keys(loaded)) {
		wanted = append(wanted, loaded[id].fc.Clone())
	}
	res, err := s.dp.Reconcile(ctx, wanted)
	if err != nil {
		return fmt.Errorf("reconcile %d connections: %w", len(wanted), err)
	}
	for id, ferr := range res.Failed {
		if e, ok := loaded[id]; ok {
			e.log.WarnContext(ctx, "dropping connection the dataplane could not restore", "error", ferr)
			delete(loaded, id)
			drop = append(drop, e)
		}
	}
	s.dropAll(ctx, drop)

	s.mu.Lock()
	defer s.mu.Unlock()
	for id, e := range loaded {
		s.armLocked(id, e)
		s.conns[id] = e
	}
	s.log.InfoContext(ctx, "state restored", "connections", len(loaded), "dropped", len(drop),
		"adopted", len(res.Adopted), "rebuilt", len(res.Rebuilt), "removed", len(res.Removed))
	return nil
}

// dropAll forgets connections found at start: their records are deleted and
// their next-hop connections closed, best effort and in parallel.
func (s *Server) dropAll(ctx context.Context, drop []*entry) {
	var wg sync.WaitGroup
	for _, e := range drop {
		_ = s.deleteRecord(e.log, e.fc.ID)
		wg.Go(func() { s.closeNextHop(ctx, e.log, e.next) })
	}
	wg.Wait()
}
