// Package conformance is the scenario suite every nsmfwd dataplane passes:
// the same Request / ping / refresh / Close / expiry / Monitor / bad-input /
// restart / scale scenarios, driven through the real NSM gRPC API against
// real namespaces. A dataplane's test calls Run with a Harness.
package conformance

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/controlplane/endpoint"
	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// Harness describes the dataplane under test.
type Harness struct {
	// NewDataplane returns a fresh dataplane instance named name whose
	// node-side objects live in the namespace at hostNS. It is called again
	// with the same arguments to simulate a forwarder restart.
	NewDataplane func(t testing.TB, hostNS, name string) forwarder.Dataplane
	// Payloads lists the payloads to test (default ETHERNET and IP).
	Payloads []forwarder.Payload
	// ScaleConnections is how many concurrent connections the scale
	// scenario builds (default 100; 0 keeps the default, <0 skips it).
	ScaleConnections int
	// Objects, when set, lists the dataplane's own objects outside the
	// kernel (VPP interfaces, say) for the node namespace at hostNS; they
	// are compared before and after each scenario like links are.
	Objects func(t testing.TB, hostNS string) []string
	// SetupNode, when set, is called once per scenario with the node
	// namespace's path before the baseline is taken, to put node-wide
	// objects in place that the dataplane uses but does not own (the
	// SR-IOV dataplane's VF stand-ins).
	SetupNode func(t testing.TB, nodeNS string)
	// ManyDeaths is how many clients die at once in ManyClientsDie
	// (default 200; the scenario needs one connection more).
	ManyDeaths int
	// HostNode runs the forwarder's node side in the test process's own
	// (the machine's) namespace instead of a throwaway one: real SR-IOV
	// VFs belong to their PF's namespace.
	HostNode bool
	// SkipDeath, when set, skips the death scenarios with this reason
	// (their expectations follow veth ends, which die with a namespace
	// where a VF's netdev comes back).
	SkipDeath string
	// SkipConcurrent, when set, skips the scenarios that build many
	// connections at once (Scale, ManyClientsDie) with this reason.
	SkipConcurrent string
}

// env is one scenario's world: a node namespace holding the forwarder's
// side, a client and an endpoint namespace, an endpoint and a forwarder
// serving on unix sockets, and an NSC-like client.
type env struct {
	t        *testing.T
	h        Harness
	name     string
	dir      string
	node     nsInfo
	client   nsInfo
	endpoint nsInfo

	epSock  string
	fwdSock string

	ep       *endpoint.Endpoint
	epServer *grpc.Server
	closes   *closeRecorder

	fwd    *fwdInstance
	cc     *grpc.ClientConn
	nsc    networkservice.NetworkServiceClient
	mon    networkservice.MonitorConnectionClient
	before snapshot
}

type nsInfo struct{ name, path string }

type fwdInstance struct {
	dp    forwarder.Dataplane
	srv   *controlplane.Server
	gs    *grpc.Server
	next  *grpc.ClientConn
	store *forwarder.Store
}

// snapshot is what must be identical before a scenario and after its
// teardown: links in each namespace involved and BPF programs machine-wide.
type snapshot struct {
	links   map[string][]string
	progs   []uint32
	objects []string
}

const ctlTimeout = 30 * time.Second

// envOption changes how newEnv builds the world.
type envOption func(*envConfig)

type envConfig struct{ endpointNetNSURL string }

// withEndpointNetNSURL makes the endpoint announce url as its namespace.
func withEndpointNetNSURL(url string) envOption {
	return func(c *envConfig) { c.endpointNetNSURL = url }
}

// serviceName is the only network service the scenario endpoint serves.
const serviceName = "icmp-responder"

func newEnv(t *testing.T, h Harness, opts ...envOption) *env {
	t.Helper()
	var cfg envConfig
	for _, o := range opts {
		o(&cfg)
	}
	nstest.RequireRoot(t)
	e := &env{t: t, h: h, dir: t.TempDir()}
	e.name = fmt.Sprintf("fwd-%d", time.Now().UnixNano()%1e9)
	for _, ns := range []*nsInfo{&e.node, &e.client, &e.endpoint} {
		if ns == &e.node && h.HostNode {
			e.node = nsInfo{name: "host", path: "/proc/1/ns/net"}
			continue
		}
		ns.name, ns.path = nstest.New(t)
	}
	if h.SetupNode != nil {
		h.SetupNode(t, e.node.path)
	}
	e.before = e.snapshot()

	// The endpoint: an NSE whose namespace is the endpoint namespace,
	// named by inode URL exactly as NSM's grpcfd would send it.
	epURL, err := nsc.InodeURL(e.endpoint.path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.endpointNetNSURL != "" {
		epURL = cfg.endpointNetNSURL
	}
	ep, err := endpoint.New(endpoint.Options{
		Name:           "nse-" + e.name,
		NetworkService: serviceName,
		CIDRs:          []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fd00:5::/112")},
		NetNSURL:       epURL,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.epSock = filepath.Join(e.dir, "nse.sock")
	epServer := grpc.NewServer()
	e.closes = &closeRecorder{at: map[string]time.Time{}}
	networkservice.RegisterNetworkServiceServer(epServer, &recordingEndpoint{NetworkServiceServer: ep, rec: e.closes})
	serveUnix(t, epServer, e.epSock)
	t.Cleanup(ep.Shutdown)
	e.ep, e.epServer = ep, epServer

	e.fwdSock = filepath.Join(e.dir, "fwd.sock")
	e.startForwarder()
	cc, err := grpc.NewClient("unix://"+e.fwdSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	e.cc = cc
	e.nsc = networkservice.NewNetworkServiceClient(cc)
	e.mon = networkservice.NewMonitorConnectionClient(cc)
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NSMFWD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

func serveUnix(t *testing.T, gs *grpc.Server, path string) {
	t.Helper()
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
}

// startForwarder starts a forwarder instance (dataplane + control plane) on
// the state directory of the scenario; called again after stopForwarder it
// is a restart.
func (e *env) startForwarder() {
	t := e.t
	t.Helper()
	store, err := forwarder.OpenStore(filepath.Join(e.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	dp := e.h.NewDataplane(t, e.node.path, e.name)
	next, err := grpc.NewClient("unix://"+e.epSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := controlplane.New(controlplane.Options{
		Name:             e.name,
		Dataplane:        dp,
		NextHop:          networkservice.NewNetworkServiceClient(next),
		Store:            store,
		MaxTokenLifetime: time.Minute,
		Logger:           testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("forwarder start: %v", err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	_ = os.Remove(e.fwdSock)
	lis, err := net.Listen("unix", e.fwdSock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	inst := &fwdInstance{dp: dp, srv: srv, gs: gs, next: next, store: store}
	e.fwd = inst
	t.Cleanup(func() { e.stopInstance(inst) })
}

// stopForwarder stops the forwarder the way a crash does as far as the
// node is concerned: no Close, no teardown; the datapath stays.
func (e *env) stopForwarder() {
	e.stopInstance(e.fwd)
}

func (e *env) stopInstance(inst *fwdInstance) {
	if inst == nil || inst.gs == nil {
		return
	}
	inst.gs.Stop()
	inst.srv.Shutdown()
	_ = inst.next.Close()
	_ = inst.dp.Close()
	inst.gs = nil
}

func (e *env) snapshot() snapshot {
	s := snapshot{links: map[string][]string{}}
	for _, ns := range []nsInfo{e.node, e.client, e.endpoint} {
		l := nstest.Links(e.t, ns.path)
		slices.Sort(l)
		s.links[ns.name] = l
	}
	s.progs = nstest.BPFProgIDs(e.t)
	slices.Sort(s.progs)
	if e.h.Objects != nil {
		s.objects = e.h.Objects(e.t, e.node.path)
		slices.Sort(s.objects)
	}
	return s
}

// requireClean fails unless links and BPF programs are as before the
// scenario. Teardown is asynchronous in the kernel (RCU), so it polls
// briefly.
func (e *env) requireClean(what string) {
	e.t.Helper()
	var now snapshot
	for deadline := time.Now().Add(5 * time.Second); ; {
		now = e.snapshot()
		if e.sameAsBefore(now) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !e.sameAsBefore(now) {
		e.t.Fatalf("%s: left behind:\nlinks before %v\nlinks after  %v\nBPF programs before %v\nBPF programs after  %v\ndataplane objects before %v\ndataplane objects after  %v",
			what, e.before.links, now.links, e.before.progs, now.progs, e.before.objects, now.objects)
	}
}

// requireUnchanged fails if links or BPF programs differ from snap, taken
// before what (a refresh, a restart) happened.
func (e *env) requireUnchanged(what string, snap snapshot) {
	e.t.Helper()
	now := e.snapshot()
	for ns, l := range snap.links {
		if !slices.Equal(l, now.links[ns]) {
			e.t.Fatalf("%s changed links in %s: %v -> %v", what, ns, l, now.links[ns])
		}
	}
	if !slices.Equal(snap.progs, now.progs) {
		e.t.Fatalf("%s changed BPF programs: %v -> %v", what, snap.progs, now.progs)
	}
	if !slices.Equal(snap.objects, now.objects) {
		e.t.Fatalf("%s changed dataplane objects: %v -> %v", what, snap.objects, now.objects)
	}
}

func (e *env) sameAsBefore(now snapshot) bool {
	for k, v := range e.before.links {
		if !slices.Equal(v, now.links[k]) {
			return false
		}
	}
	return slices.Equal(e.before.progs, now.progs) && slices.Equal(e.before.objects, now.objects)
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

// request connects an NSC in the client namespace.
func (e *env) request(opts nsc.RequestOptions) (*networkservice.Connection, error) {
	if opts.NetNSURL == "" {
		opts.NetNSURL = nsc.NetNSURLFromPath(e.client.path)
	}
	if opts.NetworkService == "" {
		opts.NetworkService = serviceName
	}
	return nsc.Request(e.ctx(), e.nsc, opts)
}

func (e *env) mustRequest(opts nsc.RequestOptions) *networkservice.Connection {
	e.t.Helper()
	conn, err := e.request(opts)
	if err != nil {
		e.t.Fatalf("Request: %v", err)
	}
	return conn
}

// ping sends count pings from namespace ns to addr and fails the test
// unless all are answered.
func (e *env) ping(ns nsInfo, addr netip.Addr) {
	e.t.Helper()
	if err := e.tryPing(ns, addr); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) tryPing(ns nsInfo, addr netip.Addr) error {
	out, err := nstest.Exec(e.t, ns.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr.String())
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w\n%s", addr, ns.name, err, out)
	}
	return nil
}

// addrs returns the client's and the endpoint's addresses of family v6.
func addrs(t testing.TB, conn *networkservice.Connection, v6 bool) (client, ep netip.Addr) {
	t.Helper()
	pick := func(list []string) netip.Addr {
		for _, s := range list {
			p, err := netip.ParsePrefix(s)
			if err == nil && p.Addr().Is6() == v6 {
				return p.Addr()
			}
		}
		t.Fatalf("no IPv6=%v address in %v", v6, list)
		return netip.Addr{}
	}
	ipc := conn.GetContext().GetIpContext()
	return pick(ipc.GetSrcIpAddrs()), pick(ipc.GetDstIpAddrs())
}

func fwdSegment(conn *networkservice.Connection, name string) *networkservice.PathSegment {
	for _, s := range conn.GetPath().GetPathSegments() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// closeRecorder notes when the endpoint received each Close, keyed by the
// NSC's connection id (the first path segment's id).
type closeRecorder struct {
	mu sync.Mutex
	at map[string]time.Time
}

func (r *closeRecorder) get(nscID string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.at[nscID]
	return t, ok
}

// recordingEndpoint is the scenario endpoint with its Closes recorded.
type recordingEndpoint struct {
	networkservice.NetworkServiceServer
	rec *closeRecorder
}

func (r *recordingEndpoint) Close(ctx context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	if segs := conn.GetPath().GetPathSegments(); len(segs) > 0 {
		r.rec.mu.Lock()
		r.rec.at[segs[0].GetId()] = time.Now()
		r.rec.mu.Unlock()
	}
	return r.NetworkServiceServer.Close(ctx, conn)
}
