package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Request builds or refreshes the vWire of req's connection, following
// NSM's rules: it adds (or finds) our path segment, picks the client-side
// mechanism, asks the next hop for the endpoint side with our segment's
// token and expiry, builds the vWire and answers in the caller's frame. A
// connection id already in our table is a refresh and creates nothing new;
// a failed new Request leaves nothing behind, here or at the next hop.
// Errors are gRPC statuses: input errors are InvalidArgument naming the
// field, the next hop's codes pass through.
func (s *Server) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	start := time.Now()
	info := requestInfo{kind: kindNew, mechanism: mechanismInvalid}
	conn, err := s.request(ctx, req, &info)
	s.metrics.observeRequest(info.mechanism, info.kind, start, err)
	return conn, toStatus(err)
}

// requestInfo is what the metrics learn about a Request while it is served.
type requestInfo struct {
	kind      string // kindNew or kindRefresh
	mechanism string // client mechanism type, or mechanismInvalid
}

func (s *Server) request(ctx context.Context, req *networkservice.NetworkServiceRequest, info *requestInfo) (*networkservice.Connection, error) {
	if err := s.checkRunning(); err != nil {
		return nil, err
	}
	// Authentication first: the caller's token and expiry may come in the
	// call's metadata (as NSM's sdk sends them) and land in its segment,
	// whose expiry is validated below.
	req = &networkservice.NetworkServiceRequest{Connection: req.GetConnection().Clone(), MechanismPreferences: req.GetMechanismPreferences()}
	caller, err := s.authenticate(ctx, req.GetConnection())
	if err != nil {
		return nil, err
	}
	conn, callerExpires, err := validateRequest(req, time.Now())
	if err != nil {
		return nil, err
	}
	prevIndex, err := nsmpath.Update(conn, s.name, uuid.NewString())
	if err != nil {
		return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.path", "%w", err)
	}
	id := conn.GetId()
	ourIndex := conn.GetPath().GetIndex()

	ctx, cancel := context.WithTimeout(ctx, s.reqTO)
	defer cancel()
	unlock, err := s.locks.lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	s.mu.Lock()
	old := s.conns[id]
	s.mu.Unlock()
	log := s.log.With("conn_id", id)
	owner := caller
	if old != nil {
		info.kind = kindRefresh
		if err := s.authorize(old, caller, "refresh"); err != nil {
			log.WarnContext(ctx, "refresh refused", "caller", caller, "owner", old.owner)
			return nil, err
		}
	}

	// Client side. A namespace the caller passed by descriptor (grpcfd)
	// is what the dataplane opens.
	var fds passedFDs
	defer fds.close()
	cm, err := s.clientMechanism(conn, req.GetMechanismPreferences(), old)
	if err != nil {
		return nil, err
	}
	labelParams(cm, conn.GetLabels())
	info.mechanism = s.mechanismLabel(cm.GetType())
	if p, ok := peer.FromContext(ctx); ok {
		fds.receive(ctx, log, fdRecver(p), cm.GetParameters()[forwarder.ParamNetNSURL], s.fdWait)
	}
	if err := s.dp.Check(ctx, id, forwarder.SideClient, fds.view(toMechanism(cm))); err != nil {
		return nil, err
	}

	// Next hop.
	out := conn.Clone()
	out.Mechanism = nil
	if old != nil {
		out.Mechanism = old.next.GetMechanism().Clone()
	}
	seg := out.GetPath().GetPathSegments()[ourIndex]
	var callerAuth credentials.AuthInfo
	if p, ok := peer.FromContext(ctx); ok {
		callerAuth = p.AuthInfo
	}
	tok, tokExp, err := s.id.Token(callerAuth)
	if err != nil {
		return nil, forwarder.Errorf(forwarder.CodeInternal, "", "path segment token: %w", err)
	}
	seg.Token = tok
	if segExp := time.Now().Add(s.maxTTL); segExp.Before(tokExp) {
		tokExp = segExp
	}
	seg.Expires = timestamppb.New(tokExp)
	seg.Metrics = nil
	nreq := &networkservice.NetworkServiceRequest{Connection: out, MechanismPreferences: s.endpointPreferences(forwarder.Payload(conn.GetPayload()))}
	var nextPeer peer.Peer
	next, err := s.next.Request(ctx, nreq, grpc.Peer(&nextPeer))
	if err != nil {
		// Nothing was created on our side; on a refresh the existing
		// connection stays as it is until it expires. A new Request that
		// timed out may still have been served by the next hop after we
		// gave up: close it there so it does not hold a ghost.
		if c := status.Code(err); old == nil && (c == codes.DeadlineExceeded || c == codes.Canceled) {
			s.closeNextHop(ctx, log, out)
		}
		return nil, nextHopError(err)
	}

	// The endpoint's namespace may come by descriptor too (NSM endpoints
	// behind grpcfd send theirs with the answer).
	fds.receive(ctx, log, fdRecver(&nextPeer), next.GetMechanism().GetParameters()[forwarder.ParamNetNSURL], s.fdWait)
	fc, em, err := s.buildConn(ctx, id, conn, cm, next, callerExpires, &fds)
	if err != nil {
		if old == nil {
			s.closeNextHop(ctx, log, next)
		}
		return nil, fmt.Errorf("next hop connection: %w", err)
	}

	dfc := fc.Clone()
	dfc.Client.Mechanism = fds.view(dfc.Client.Mechanism)
	dfc.Endpoint.Mechanism = fds.view(dfc.Endpoint.Mechanism)
	if err := s.dp.Connect(ctx, dfc); err != nil {
		if old == nil {
			s.rollback(ctx, log, id, next)
		}
		return nil, err
	}
	restoreParams(fc.Client.Mechanism, dfc.Client.Mechanism)
	restoreParams(fc.Endpoint.Mechanism, dfc.Endpoint.Mechanism)
	// The dataplane may have chosen interface names; remember them so a
	// refresh asks for the same ones.
	setParams(cm, fc.Client.Mechanism.Params)
	setParams(em, fc.Endpoint.Mechanism.Params)

	// A tunnel may have lowered the MTU: the vWire's is the connection's.
	fc.MTU = dfc.MTU

	// The client-facing connection, in our frame.
	res := conn.Clone()
	res.Context = proto.CloneOf(next.GetContext())
	if fc.MTU != 0 && (res.GetContext().GetMTU() == 0 || fc.MTU < res.GetContext().GetMTU()) {
		if res.Context == nil {
			res.Context = &networkservice.ConnectionContext{}
		}
		res.Context.MTU = fc.MTU
	}
	res.Mechanism = cm
	res.Path = proto.CloneOf(next.GetPath())
	res.Path.Index = ourIndex
	res.Id = id
	if next.GetNetworkServiceEndpointName() != "" {
		res.NetworkServiceEndpointName = next.GetNetworkServiceEndpointName()
	}
	res.State = networkservice.State_UP
	if st, err := s.dp.Stats(ctx, id); err == nil {
		res.GetPath().GetPathSegments()[ourIndex].Metrics = nsmpath.Metrics(st)
	} else {
		log.DebugContext(ctx, "no stats", "error", err)
	}

	if old != nil && old.owner != "" {
		owner = old.owner
	}
	e := &entry{conn: res, next: next, fc: fc, owner: owner, log: log}
	if err := s.persist(id, e); err != nil {
		if old == nil {
			s.rollback(ctx, log, id, next)
			return nil, err
		}
		// The vWire is refreshed; a stale record only means an earlier
		// expiry if we restart before the next refresh.
		log.WarnContext(ctx, "refresh not persisted", "error", err)
	}
	if err := s.install(id, e, old); err != nil {
		if old == nil {
			s.rollback(ctx, log, id, next)
			_ = s.deleteRecord(log, id)
		}
		return nil, err
	}
	if old == nil {
		log.InfoContext(ctx, "connection created", "mechanism", cm.GetType(), "endpoint_mechanism", em.GetType(), "expires", fc.Expires)
	} else {
		log.DebugContext(ctx, "connection refreshed", "expires", fc.Expires)
	}

	ret := res.Clone()
	nsmpath.Restore(ret, prevIndex)
	return ret, nil
}

// validateRequest checks req and returns a copy of its connection and the
// caller segment's expiry.
func validateRequest(req *networkservice.NetworkServiceRequest, now time.Time) (*networkservice.Connection, time.Time, error) {
	in := req.GetConnection()
	if in == nil || in.GetPath() == nil {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.path", "missing")
	}
	segs := in.GetPath().GetPathSegments()
	if len(segs) == 0 {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.path.path_segments", "empty: the caller's segment is missing")
	}
	idx := in.GetPath().GetIndex()
	if int(idx) >= len(segs) {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.path.index", "%d is out of range for %d path segments", idx, len(segs))
	}
	field := fmt.Sprintf("connection.path.path_segments[%d].expires", idx)
	exp := segs[idx].GetExpires()
	if exp == nil {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, field, "missing")
	}
	if err := exp.CheckValid(); err != nil {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, field, "%w", err)
	}
	expires := exp.AsTime()
	if !expires.After(now) {
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, field, "%s is in the past", expires.Format(time.RFC3339Nano))
	}
	conn := in.Clone()
	switch forwarder.Payload(conn.GetPayload()) {
	case "":
		conn.Payload = string(forwarder.PayloadEthernet)
	case forwarder.PayloadEthernet, forwarder.PayloadIP:
	default:
		return nil, time.Time{}, forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.payload", "%q is neither %s nor %s", conn.GetPayload(), forwarder.PayloadEthernet, forwarder.PayloadIP)
	}
	return conn, expires, nil
}

// clientMechanism returns (a copy of) the mechanism toward the caller: the
// one already in the connection on a refresh, otherwise the first preference
// that both the registry and the dataplane support.
func (s *Server) clientMechanism(conn *networkservice.Connection, prefs []*networkservice.Mechanism, old *entry) (*networkservice.Mechanism, error) {
	supported := s.dp.Mechanisms(forwarder.SideClient)
	if m := conn.GetMechanism(); m != nil {
		const field = "connection.mechanism"
		if !slices.Contains(supported, m.GetType()) {
			return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, field+".type", "mechanism %q is not supported by the %s dataplane (supported: %s)", m.GetType(), s.dp.Name(), strings.Join(supported, ", "))
		}
		if err := s.reg.Validate(toMechanism(m), field); err != nil {
			return nil, err
		}
		return m.Clone(), nil
	}
	if old != nil {
		// A refresh that did not send the mechanism back keeps ours.
		return old.conn.GetMechanism().Clone(), nil
	}
	var offered []string
	for i, p := range s.prioritize(prefs) {
		offered = append(offered, p.GetType())
		if _, ok := s.reg.Lookup(p.GetType()); !ok || !slices.Contains(supported, p.GetType()) {
			continue
		}
		if err := s.reg.Validate(toMechanism(p), fmt.Sprintf("mechanism_preferences[%d]", i)); err != nil {
			return nil, err
		}
		return p.Clone(), nil
	}
	var usable []string
	for _, t := range supported {
		if _, ok := s.reg.Lookup(t); ok {
			usable = append(usable, t)
		}
	}
	return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, "mechanism_preferences", "no supported mechanism: offered [%s], supported [%s]", strings.Join(offered, ", "), strings.Join(usable, ", "))
}

// endpointPreferences lists the mechanisms we can build toward the next
// hop, with the parameters the dataplane offers for each (a REMOTE
// mechanism's local tunnel end).
func (s *Server) endpointPreferences(payload forwarder.Payload) []*networkservice.Mechanism {
	var out []*networkservice.Mechanism
	offerer, _ := s.dp.(forwarder.Offerer)
	for _, t := range s.dp.Mechanisms(forwarder.SideEndpoint) {
		spec, ok := s.reg.Lookup(t)
		if !ok {
			continue
		}
		cls := spec.Cls
		if cls == "" {
			cls = forwarder.ClsLocal
		}
		params := map[string]string{}
		if offerer != nil {
			p, ok := offerer.Offer(t, payload)
			if !ok {
				continue
			}
			maps.Copy(params, p)
		}
		out = append(out, &networkservice.Mechanism{Cls: cls, Type: t, Parameters: params})
	}
	return s.prioritize(out)
}

// prioritize orders ms by the configured mechanism priority, stably.
func (s *Server) prioritize(ms []*networkservice.Mechanism) []*networkservice.Mechanism {
	if len(s.priority) == 0 {
		return ms
	}
	rank := func(m *networkservice.Mechanism) int {
		if i := slices.Index(s.priority, m.GetType()); i >= 0 {
			return i
		}
		return len(s.priority)
	}
	out := slices.Clone(ms)
	slices.SortStableFunc(out, func(a, b *networkservice.Mechanism) int { return rank(a) - rank(b) })
	return out
}

// buildConn validates the next hop's answer and turns it into the vWire to
// build. It returns the next hop's mechanism (inside next) for the
// dataplane's parameters to be copied back.
func (s *Server) buildConn(ctx context.Context, id string, conn *networkservice.Connection, cm *networkservice.Mechanism, next *networkservice.Connection, expires time.Time, fds *passedFDs) (*forwarder.Conn, *networkservice.Mechanism, error) {
	segs := next.GetPath().GetPathSegments()
	idx := conn.GetPath().GetIndex()
	if int(idx) >= len(segs) || segs[idx].GetId() != id || segs[idx].GetName() != s.name {
		return nil, nil, forwarder.Errorf(forwarder.CodeInternal, "connection.path", "our segment %q is not at index %d", id, idx)
	}
	em := next.GetMechanism()
	if em == nil {
		return nil, nil, forwarder.Errorf(forwarder.CodeInternal, "connection.mechanism", "missing")
	}
	const field = "connection.mechanism"
	if supported := s.dp.Mechanisms(forwarder.SideEndpoint); !slices.Contains(supported, em.GetType()) {
		return nil, nil, forwarder.Errorf(forwarder.CodeInvalidArgument, field+".type", "mechanism %q is not supported by the %s dataplane (supported: %s)", em.GetType(), s.dp.Name(), strings.Join(supported, ", "))
	}
	fem := toMechanism(em)
	if err := s.reg.Validate(fem, field); err != nil {
		return nil, nil, err
	}
	if err := s.dp.Check(ctx, id, forwarder.SideEndpoint, fds.view(fem)); err != nil {
		return nil, nil, err
	}
	cip, eip, err := ipSides(next.GetContext().GetIpContext())
	if err != nil {
		return nil, nil, err
	}
	fc := &forwarder.Conn{
		ID:             id,
		NetworkService: conn.GetNetworkService(),
		Labels:         maps.Clone(conn.GetLabels()),
		Payload:        forwarder.Payload(conn.GetPayload()),
		MTU:            next.GetContext().GetMTU(),
		Client:         forwarder.Side{Mechanism: toMechanism(cm), IP: cip},
		Endpoint:       forwarder.Side{Mechanism: fem, IP: eip},
		Expires:        expires,
	}
	return fc, em, nil
}

// rollback removes what a failed new Request created: the next hop's
// connection and anything the dataplane built. It runs even when ctx is
// cancelled.
func (s *Server) rollback(ctx context.Context, log *slog.Logger, id string, next *networkservice.Connection) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.rbTO)
	defer cancel()
	if err := s.dp.Disconnect(rctx, id); err != nil {
		log.WarnContext(ctx, "rollback: dataplane disconnect", "error", err)
	}
	s.closeNextHop(ctx, log, next)
}

// closeNextHop closes next at the next hop, best effort.
func (s *Server) closeNextHop(ctx context.Context, log *slog.Logger, next *networkservice.Connection) {
	if next == nil {
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.rbTO)
	defer cancel()
	if _, err := s.next.Close(rctx, next); err != nil {
		log.WarnContext(ctx, "next hop close", "error", err)
	}
}
