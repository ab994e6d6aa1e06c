package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	fwdName  = "fwd-1"
	nseName  = "nse-1"
	nscNetNS = "inode://4/4026531999"
	nseNetNS = "inode://4/4026532000"
)

// fakeDP is a Dataplane that records its calls as text lines.
type fakeDP struct {
	mu         sync.Mutex
	calls      []string
	conns      map[string]*forwarder.Conn
	checkErr   map[forwarder.SideKind]error
	connectErr error
	disconnErr error
	failed     map[string]error // Reconcile reports these as failed
	readyErr   error
}

func newFakeDP() *fakeDP {
	return &fakeDP{conns: map[string]*forwarder.Conn{}, checkErr: map[forwarder.SideKind]error{}}
}

func (d *fakeDP) record(format string, args ...any) {
	d.calls = append(d.calls, fmt.Sprintf(format, args...))
}

// Calls returns the recorded calls, optionally only those starting with prefix.
func (d *fakeDP) Calls(prefix string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, c := range d.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

func (d *fakeDP) Name() string { return "fake" }

func (d *fakeDP) Mechanisms(forwarder.SideKind) []string { return []string{forwarder.MechanismKernel} }

func (d *fakeDP) Check(_ context.Context, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.record("check %s %s %s", id, side, m.Type)
	if tok := m.Param("sriovToken"); tok != "" {
		d.record("check %s %s sriovToken=%s", id, side, tok)
	}
	return d.checkErr[side]
}

func (d *fakeDP) Connect(_ context.Context, c *forwarder.Conn) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.record("connect %s", c.ID)
	if d.connectErr != nil {
		return d.connectErr
	}
	if c.Client.Mechanism.Params[forwarder.ParamIfName] == "" {
		c.Client.Mechanism.Params[forwarder.ParamIfName] = "cl-" + c.ID[:8]
	}
	d.conns[c.ID] = c.Clone()
	return nil
}

func (d *fakeDP) Disconnect(_ context.Context, id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.record("disconnect %s", id)
	if d.disconnErr != nil {
		return d.disconnErr
	}
	delete(d.conns, id)
	return nil
}

func (d *fakeDP) Reconcile(_ context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	res := forwarder.ReconcileResult{Failed: map[string]error{}}
	keep := map[string]*forwarder.Conn{}
	for _, c := range wanted {
		ids = append(ids, c.ID)
		if err, ok := d.failed[c.ID]; ok {
			res.Failed[c.ID] = err
			continue
		}
		res.Adopted = append(res.Adopted, c.ID)
		keep[c.ID] = c.Clone()
	}
	d.conns = keep
	d.record("reconcile [%s]", strings.Join(ids, " "))
	return res, nil
}

func (d *fakeDP) Stats(_ context.Context, id string) (forwarder.Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.conns[id]; !ok {
		return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "no connection %q", id)
	}
	return forwarder.Stats{
		ClientToEndpoint: forwarder.Counters{Packets: 10, Bytes: 1000},
		EndpointToClient: forwarder.Counters{Packets: 20, Bytes: 2000},
	}, nil
}

func (d *fakeDP) Ready(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.readyErr
}

func (d *fakeDP) Close() error { return nil }

func (d *fakeDP) Conn(id string) *forwarder.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns[id].Clone()
}

var _ forwarder.Dataplane = (*fakeDP)(nil)

// fakeNSE is a tiny endpoint: it adds its segment, answers with a KERNEL
// mechanism and an IP context, and records calls as text lines.
type fakeNSE struct {
	networkservice.UnimplementedNetworkServiceServer

	mu       sync.Mutex
	calls    []string
	reqs     []*networkservice.NetworkServiceRequest
	ids      map[string]string // our id -> NSE segment id
	err      error
	badIPCtx bool
}

func newFakeNSE() *fakeNSE { return &fakeNSE{ids: map[string]string{}} }

func (n *fakeNSE) Calls(prefix string) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for _, c := range n.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

func (n *fakeNSE) LastRequest() *networkservice.NetworkServiceRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.reqs) == 0 {
		return nil
	}
	return n.reqs[len(n.reqs)-1]
}

func (n *fakeNSE) Request(_ context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	conn := req.GetConnection().Clone()
	mech := "none"
	if conn.GetMechanism() != nil {
		mech = conn.GetMechanism().GetType()
	}
	n.calls = append(n.calls, fmt.Sprintf("request %s index=%d mechanism=%s", conn.GetId(), conn.GetPath().GetIndex(), mech))
	n.reqs = append(n.reqs, req)
	if n.err != nil {
		return nil, n.err
	}
	idx := conn.GetPath().GetIndex()
	segs := conn.GetPath().GetPathSegments()
	nseID, ok := n.ids[conn.GetId()]
	if !ok {
		nseID = fmt.Sprintf("nse-%d", len(n.ids))
		n.ids[conn.GetId()] = nseID
	}
	conn.Path.PathSegments = append(segs[:idx+1:idx+1], &networkservice.PathSegment{
		Name: nseName, Id: nseID, Token: "nse-token", Expires: segs[idx].GetExpires(),
	})
	conn.Mechanism = &networkservice.Mechanism{
		Cls:        forwarder.ClsLocal,
		Type:       forwarder.MechanismKernel,
		Parameters: map[string]string{forwarder.ParamNetNSURL: nseNetNS, forwarder.ParamIfName: "nsm-1"},
	}
	ipc := &networkservice.IPContext{
		SrcIpAddrs:  []string{"172.16.0.1/32"},
		DstIpAddrs:  []string{"172.16.0.2/32"},
		SrcRoutes:   []*networkservice.Route{{Prefix: "172.16.0.2/32"}},
		DstRoutes:   []*networkservice.Route{{Prefix: "172.16.0.1/32"}},
		IpNeighbors: []*networkservice.IpNeighbor{{Ip: "172.16.0.2", HardwareAddress: "02:00:00:00:00:02"}},
	}
	if n.badIPCtx {
		ipc.DstIpAddrs = []string{"not-an-ip"}
	}
	conn.Context = &networkservice.ConnectionContext{IpContext: ipc, MTU: 1450}
	conn.NetworkServiceEndpointName = nseName
	return conn, nil
}

func (n *fakeNSE) Close(_ context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, fmt.Sprintf("close %s", conn.GetId()))
	return &emptypb.Empty{}, nil
}

// direct adapts a NetworkServiceServer to a client without gRPC (for
// synctest bubbles), copying messages as the wire would.
type direct struct {
	srv networkservice.NetworkServiceServer
}

func (d direct) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, _ ...grpc.CallOption) (*networkservice.Connection, error) {
	c, err := d.srv.Request(ctx, clone(req))
	return clone(c), err
}

func (d direct) Close(ctx context.Context, conn *networkservice.Connection, _ ...grpc.CallOption) (*emptypb.Empty, error) {
	return d.srv.Close(ctx, conn.Clone())
}

// env is a Server wired to a fake dataplane and a fake NSE over gRPC on
// unix sockets, with a client toward the Server.
type env struct {
	t       *testing.T
	dp      *fakeDP
	nse     *fakeNSE
	srv     *Server
	client  networkservice.NetworkServiceClient
	monitor networkservice.MonitorConnectionClient
	health  *health.Server
	dir     string
	fwdSock string
	stop    func()
}

type envOpt func(*Options)

func newEnv(t *testing.T, dir string, dp *fakeDP, nse *fakeNSE, opts ...envOpt) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if dp == nil {
		dp = newFakeDP()
	}
	if nse == nil {
		nse = newFakeNSE()
	}
	sockDir, err := os.MkdirTemp("", "cp")
	if err != nil {
		t.Fatal(err)
	}
	nseSock := filepath.Join(sockDir, "nse.sock")
	fwdSock := filepath.Join(sockDir, "fwd.sock")
	var stops []func()
	stop := func() {
		for _, f := range slices.Backward(stops) {
			f()
		}
		stops = nil
		_ = os.RemoveAll(sockDir)
	}
	t.Cleanup(stop)

	nseServer := grpc.NewServer()
	networkservice.RegisterNetworkServiceServer(nseServer, nse)
	serve(t, nseServer, nseSock)
	stops = append(stops, nseServer.Stop)

	ctx := t.Context()
	nseCC, err := Dial(ctx, "unix://"+nseSock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, func() { _ = nseCC.Close() })

	store, err := forwarder.OpenStore(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	o := Options{
		Name:      fwdName,
		Dataplane: dp,
		NextHop:   networkservice.NewNetworkServiceClient(nseCC),
		Store:     store,
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Health:    hs,
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stops = append(stops, s.Shutdown)

	var serverOpts []grpc.ServerOption
	if o.Identity != nil {
		serverOpts = o.Identity.ServerOptions()
	}
	fwdServer := grpc.NewServer(serverOpts...)
	s.Register(fwdServer)
	serve(t, fwdServer, fwdSock)
	stops = append(stops, fwdServer.Stop)

	e := &env{t: t, dp: dp, nse: nse, srv: s, dir: dir, health: hs, stop: stop, fwdSock: fwdSock}
	if o.Identity == nil || o.Identity.Insecure() {
		cc := e.dial()
		e.client = networkservice.NewNetworkServiceClient(cc)
		e.monitor = networkservice.NewMonitorConnectionClient(cc)
	}
	return e
}

// dial connects to the forwarder with opts (plaintext by default) and
// closes the connection at the end of the test.
func (e *env) dial(opts ...grpc.DialOption) *grpc.ClientConn {
	e.t.Helper()
	cc, err := Dial(e.t.Context(), "unix://"+e.fwdSock, 5*time.Second, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func serve(t *testing.T, gs *grpc.Server, sock string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newRequest returns what an NSMgr would send us: its segment at index 0,
// expiring after ttl.
func newRequest(nscID string, ttl time.Duration) *networkservice.NetworkServiceRequest {
	return &networkservice.NetworkServiceRequest{
		Connection: &networkservice.Connection{
			Id:             nscID,
			NetworkService: "ns-1",
			Path: &networkservice.Path{PathSegments: []*networkservice.PathSegment{{
				Name: "nsmgr-1", Id: nscID, Token: "mgr-token", Expires: timestamppb.New(time.Now().Add(ttl)),
			}}},
		},
		MechanismPreferences: []*networkservice.Mechanism{
			{Cls: forwarder.ClsLocal, Type: "MEMIF"},
			{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Parameters: map[string]string{forwarder.ParamNetNSURL: nscNetNS}},
		},
	}
}

// refreshOf turns a returned connection into the refresh request the caller
// would send.
func refreshOf(conn *networkservice.Connection, ttl time.Duration) *networkservice.NetworkServiceRequest {
	c := conn.Clone()
	c.GetPath().GetPathSegments()[c.GetPath().GetIndex()].Expires = timestamppb.New(time.Now().Add(ttl))
	return &networkservice.NetworkServiceRequest{Connection: c}
}

func codeOf(err error) codes.Code { return status.Code(err) }

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func clone[M proto.Message](m M) M {
	if !m.ProtoReflect().IsValid() {
		return m
	}
	return proto.CloneOf(m)
}
