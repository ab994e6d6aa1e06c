package controlplane

import (
	"context"
	"sync"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// reapWorkers bounds how many dead connections are torn down at once. Each
// holds only its own connection's lock, so Requests for other connections
// are never queued behind the reaper.
const reapWorkers = 16

// reasonReaped labels the close metric of a reaped connection.
const reasonReaped = "reaped"

// reaper turns a Watcher dataplane's death hints into teardowns. Hints are
// queued per connection id (duplicates coalesce), and each is confirmed with
// Watcher.Alive under the connection's lock before anything is removed: the
// forwarder's own Disconnect, a rollback, a refresh or a restart produce
// the same kernel events as a death, and must never reap a live
// connection.
type reaper struct {
	s *Server
	w forwarder.Watcher

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []string                      // ids in arrival order
	pending map[string]forwarder.SideKind // queued ids; "" = check both sides
	stopped bool
}

func newReaper(s *Server, w forwarder.Watcher) *reaper {
	r := &reaper{s: s, w: w, pending: map[string]forwarder.SideKind{}}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// run watches and reaps until ctx ends.
func (r *reaper) run(ctx context.Context) {
	hints := make(chan forwarder.Death, 4096)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.w.Watch(ctx, hints); err != nil && ctx.Err() == nil {
			r.s.log.ErrorContext(ctx, "death watch stopped: dead clients are now only removed at expiry", "error", err)
		}
	})
	for range reapWorkers {
		wg.Go(func() { r.work(ctx) })
	}
	wg.Go(func() {
		<-ctx.Done()
		r.mu.Lock()
		r.stopped = true
		r.cond.Broadcast()
		r.mu.Unlock()
	})
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case h := <-hints:
			if h.ID == "" {
				for _, id := range r.s.connIDs() {
					r.enqueue(id, "")
				}
				continue
			}
			r.enqueue(h.ID, h.Side)
		}
	}
}

func (r *reaper) enqueue(id string, side forwarder.SideKind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev, ok := r.pending[id]; ok {
		if prev != side {
			r.pending[id] = "" // check both
		}
		return
	}
	r.pending[id] = side
	r.queue = append(r.queue, id)
	r.cond.Signal()
}

func (r *reaper) next() (string, forwarder.SideKind, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.queue) == 0 && !r.stopped {
		r.cond.Wait()
	}
	if r.stopped {
		return "", "", false
	}
	id := r.queue[0]
	r.queue = r.queue[1:]
	side := r.pending[id]
	delete(r.pending, id)
	return id, side, true
}

func (r *reaper) work(ctx context.Context) {
	for {
		id, side, ok := r.next()
		if !ok {
			return
		}
		r.check(ctx, id, side)
	}
}

// check confirms and acts on a hint about connection id.
func (r *reaper) check(ctx context.Context, id string, side forwarder.SideKind) {
	s := r.s
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return
	}
	defer unlock()
	s.mu.Lock()
	e := s.conns[id]
	s.mu.Unlock()
	if e == nil {
		return // closed, expired or never ours: the event was our own teardown
	}
	if side != forwarder.SideEndpoint {
		alive, reason, err := r.w.Alive(ctx, e.fc, forwarder.SideClient)
		if err != nil {
			e.log.WarnContext(ctx, "death check", "side", forwarder.SideClient, "error", err)
			return
		}
		if !alive {
			r.reapClient(ctx, id, e, reason)
			return
		}
	}
	if side != forwarder.SideClient && e.conn.GetState() != networkservice.State_DOWN {
		alive, reason, err := r.w.Alive(ctx, e.fc, forwarder.SideEndpoint)
		if err != nil {
			e.log.WarnContext(ctx, "death check", "side", forwarder.SideEndpoint, "error", err)
			return
		}
		if !alive {
			r.endpointDown(ctx, id, e, reason)
		}
	}
}

// reapClient removes the whole vWire of a connection whose client died and
// closes it at the next hop, as a Close would.
func (r *reaper) reapClient(ctx context.Context, id string, e *entry, reason string) {
	s := r.s
	if err := s.teardown(ctx, id, e, reasonReaped); err != nil {
		e.log.WarnContext(ctx, "reap failed; the connection stays until it expires", "reason", reason, "error", err)
		return
	}
	if s.metrics != nil {
		s.metrics.reaped.WithLabelValues(reason).Inc()
	}
	e.log.InfoContext(ctx, "connection reaped", "reason", reason)
}

// endpointDown removes the endpoint side of a connection whose endpoint
// died and tells Monitor subscribers the connection is DOWN, which is what
// NSM's heal watches for to re-select an endpoint. The client keeps its
// interface; the heal's Request rebuilds the endpoint side.
func (r *reaper) endpointDown(ctx context.Context, id string, e *entry, reason string) {
	s := r.s
	if err := r.w.DisconnectSide(ctx, id, forwarder.SideEndpoint); err != nil {
		e.log.WarnContext(ctx, "endpoint side removal failed", "reason", reason, "error", err)
	}
	down := *e
	down.conn = e.conn.Clone()
	down.conn.State = networkservice.State_DOWN
	if err := s.install(id, &down, e); err != nil {
		return // shutting down
	}
	if s.metrics != nil {
		s.metrics.reaped.WithLabelValues(reason).Inc()
	}
	e.log.InfoContext(ctx, "endpoint side died; connection DOWN until healed", "reason", reason)
}

// connIDs lists the ids of the connections held.
func (s *Server) connIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.conns))
	for id := range s.conns {
		ids = append(ids, id)
	}
	return ids
}
