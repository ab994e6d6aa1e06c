package controlplane

import (
	"context"
	"sync"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
)

// subscriber is one MonitorConnections stream. Events are queued in a
// bounded channel so a slow reader never blocks a Request; one that falls
// too far behind is dropped (its stream ends with ResourceExhausted and the
// client resubscribes, getting a fresh initial state).
type subscriber struct {
	selector *networkservice.MonitorScopeSelector
	// caller is the subscriber's identity and all whether it sees every
	// connection; otherwise it sees only those it owns.
	caller   string
	all      bool
	events   chan *networkservice.ConnectionEvent
	once     sync.Once
	gone     chan struct{} // closed when dropped
	overflow bool          // set before gone is closed
}

// sees reports whether the subscriber may see e.
func (sub *subscriber) sees(e *entry) bool {
	return (sub.all || e.owner == sub.caller) && e.conn.MatchesMonitorScopeSelector(sub.selector)
}

func (sub *subscriber) drop() {
	sub.once.Do(func() { close(sub.gone) })
}

// MonitorConnections streams our connections matching selector: first an
// INITIAL_STATE_TRANSFER, then UPDATE and DELETE events. A caller sees only
// the connections it created, unless its identity says it sees all (our
// own identity, or anyone in insecure mode).
func (s *Server) MonitorConnections(selector *networkservice.MonitorScopeSelector, srv networkservice.MonitorConnection_MonitorConnectionsServer) error {
	caller, all, err := s.id.Caller(srv.Context())
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	sub := &subscriber{
		selector: selector,
		caller:   caller,
		all:      all,
		events:   make(chan *networkservice.ConnectionEvent, s.monBuf),
		gone:     make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, ErrShutdown.Error())
	}
	initial := make(map[string]*networkservice.Connection)
	for id, e := range s.conns {
		if sub.sees(e) {
			initial[id] = e.conn.Clone()
		}
	}
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	defer s.unsubscribe(sub)

	ctx := srv.Context()
	s.refreshMetrics(ctx, initial)
	if err := srv.Send(&networkservice.ConnectionEvent{
		Type:        networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER,
		Connections: initial,
	}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.gone:
			if sub.overflow {
				return status.Error(codes.ResourceExhausted, "monitor subscriber too slow, dropped")
			}
			return nil // shutdown
		case ev := <-sub.events:
			if err := srv.Send(ev); err != nil {
				return err
			}
		}
	}
}

func (s *Server) unsubscribe(sub *subscriber) {
	s.mu.Lock()
	delete(s.subs, sub)
	s.mu.Unlock()
	sub.drop()
}

// refreshMetrics fills our segment's metrics from the dataplane's counters.
func (s *Server) refreshMetrics(ctx context.Context, conns map[string]*networkservice.Connection) {
	for id, c := range conns {
		st, err := s.dp.Stats(ctx, id)
		if err != nil {
			s.log.DebugContext(ctx, "no stats", "conn_id", id, "error", err)
			continue
		}
		if seg := c.GetCurrentPathSegment(); seg != nil && seg.GetId() == id {
			seg.Metrics = nsmpath.Metrics(st)
		}
	}
}

// publishLocked queues an event about e's connection (in our frame) for
// every subscriber that sees it. The caller holds s.mu, which orders events
// with the table changes and the initial state transfers.
func (s *Server) publishLocked(typ networkservice.ConnectionEventType, e *entry) {
	conn := e.conn
	for sub := range s.subs {
		if !sub.sees(e) {
			continue
		}
		ev := &networkservice.ConnectionEvent{
			Type:        typ,
			Connections: map[string]*networkservice.Connection{conn.GetId(): conn.Clone()},
		}
		select {
		case sub.events <- ev:
		default:
			delete(s.subs, sub)
			sub.overflow = true
			sub.drop()
			s.log.Warn("monitor subscriber dropped: too slow", "buffer", cap(sub.events))
		}
	}
}
