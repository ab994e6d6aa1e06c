package controlplane

import (
	"context"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// expiryRetry is how long an expiry waits before trying again when the
// dataplane could not remove the vWire.
const expiryRetry = 10 * time.Second

// Close removes the vWire of conn and closes it at the next hop. Closing an
// unknown connection succeeds: Close is idempotent.
//
// Only the identity that created the connection may close it
// (PermissionDenied otherwise; see authorize). A caller that fails
// authentication gets Unauthenticated, even for an unknown connection.
func (s *Server) Close(ctx context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	conn = conn.Clone()
	caller, err := s.authenticate(ctx, conn)
	if err != nil {
		return nil, toStatus(err)
	}
	id, ok := s.lookupID(conn)
	if !ok {
		return &emptypb.Empty{}, nil
	}
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	defer unlock()
	s.mu.Lock()
	e := s.conns[id]
	s.mu.Unlock()
	if e == nil {
		return &emptypb.Empty{}, nil
	}
	if err := s.authorize(e, caller, "close"); err != nil {
		e.log.WarnContext(ctx, "close refused", "caller", caller, "owner", e.owner)
		return nil, toStatus(err)
	}
	if err := s.teardown(ctx, id, e, reasonClose); err != nil {
		return nil, toStatus(err)
	}
	e.log.InfoContext(ctx, "connection closed")
	return &emptypb.Empty{}, nil
}

// lookupID finds which of our connections conn names: by our path segment,
// or by its id when the caller passes our frame.
func (s *Server) lookupID(conn *networkservice.Connection) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := nsmpath.Find(conn, s.name); ok {
		if _, known := s.conns[id]; known {
			return id, true
		}
	}
	if id := conn.GetId(); id != "" {
		if _, known := s.conns[id]; known {
			return id, true
		}
	}
	return "", false
}

// teardown removes connection id (entry e), the caller holding its lock;
// reason labels the close metric.
// When the dataplane cannot remove the vWire the connection stays in the
// table and in the store, so a retry, the expiry or the next start's
// reconcile can finish the job; the next hop is closed only once the vWire
// is gone.
func (s *Server) teardown(ctx context.Context, id string, e *entry, reason string) (err error) {
	start := time.Now()
	defer func() { s.metrics.observeClose(s.mechanismLabel(e.fc.Client.Mechanism.Type), reason, start, err) }()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.rbTO)
	defer cancel()
	if err := s.dp.Disconnect(ctx, id); err != nil {
		return err
	}
	if _, err := s.next.Close(ctx, e.next); err != nil {
		e.log.WarnContext(ctx, "next hop close", "error", err)
	}
	_ = s.deleteRecord(e.log, id)
	s.mu.Lock()
	if s.conns[id] == e {
		delete(s.conns, id)
		if e.timer != nil {
			e.timer.Stop()
		}
		s.publishLocked(networkservice.ConnectionEventType_DELETE, e)
	}
	s.mu.Unlock()
	return nil
}

// install puts e in the table in place of old, arms its expiry timer and
// tells Monitor subscribers. The caller holds id's lock.
func (s *Server) install(id string, e *entry, old *entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "%w", ErrShutdown)
	}
	if old != nil && old.timer != nil {
		old.timer.Stop()
	}
	s.armLocked(id, e)
	s.conns[id] = e
	s.publishLocked(networkservice.ConnectionEventType_UPDATE, e)
	return nil
}

// armLocked sets e's timer to fire at its expiry (or after d when given).
func (s *Server) armLocked(id string, e *entry) {
	s.armAfterLocked(id, e, time.Until(e.fc.Expires))
}

func (s *Server) armAfterLocked(id string, e *entry, d time.Duration) {
	e.timer = time.AfterFunc(d, func() { s.expire(id, e) })
}

// expire closes connection id when e is still its entry, i.e. the caller
// did not refresh it in time.
func (s *Server) expire(id string, e *entry) {
	s.mu.Lock()
	if s.closed || s.conns[id] != e {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	unlock, err := s.locks.lock(context.Background(), id)
	if err != nil {
		return
	}
	defer unlock()
	s.mu.Lock()
	current := s.conns[id] == e && !s.closed
	s.mu.Unlock()
	if !current {
		return // refreshed or closed while we waited
	}
	if err := s.teardown(context.Background(), id, e, reasonExpiry); err != nil {
		e.log.Warn("expiry: teardown failed, retrying", "error", err, "retry_in", expiryRetry)
		s.mu.Lock()
		if !s.closed && s.conns[id] == e {
			s.armAfterLocked(id, e, expiryRetry)
		}
		s.mu.Unlock()
		return
	}
	e.log.Info("connection expired")
}
