package controlplane

import (
	"context"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// callerSegment returns the caller's path segment in conn as it arrives:
// the one at Path.Index, or the one before it when the caller passed our
// frame (the segment at Path.Index is ours). nil when the path names no
// caller.
func callerSegment(conn *networkservice.Connection, name string) *networkservice.PathSegment {
	segs := conn.GetPath().GetPathSegments()
	idx := int(conn.GetPath().GetIndex())
	if idx >= len(segs) {
		return nil
	}
	if segs[idx].GetName() != name {
		return segs[idx]
	}
	if idx == 0 {
		return nil
	}
	return segs[idx-1]
}

// authenticate identifies the caller of a Request or Close on conn, whose
// caller segment may get its token and expiry from the call's metadata (so
// conn must be the server's own copy). Failures are Unauthenticated.
func (s *Server) authenticate(ctx context.Context, conn *networkservice.Connection) (string, error) {
	caller, err := s.id.Authenticate(ctx, callerSegment(conn, s.name))
	if err != nil {
		return "", status.Error(codes.Unauthenticated, err.Error())
	}
	return caller, nil
}

// authorize lets caller refresh or close e only when it created it. A
// connection restored from a record written before owners were kept has
// none; its next refresh claims it.
func (s *Server) authorize(e *entry, caller, op string) error {
	if e.owner == "" || e.owner == caller {
		return nil
	}
	return forwarder.Errorf(forwarder.CodePermissionDenied, "connection.path",
		"%s of connection %q refused: it belongs to %q, not to the caller %q", op, e.fc.ID, e.owner, caller)
}
