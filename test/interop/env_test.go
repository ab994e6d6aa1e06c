package interop

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	kernelmech "github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"
	"github.com/networkservicemesh/api/pkg/api/networkservice/payload"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/client"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/nsmgr"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/kernel"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/chain"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/next"
	"github.com/networkservicemesh/sdk/pkg/networkservice/ipam/point2pointipam"
	"github.com/networkservicemesh/sdk/pkg/tools/sandbox"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/vppapi"
)

const (
	serviceName = "icmp-responder"
	// Interface names the NSC and the NSE ask for in their namespaces.
	clientIf   = "nsm-c"
	endpointIf = "nsm-e"
	ctlTimeout = 30 * time.Second
)

// world is one NSM domain from sdk's sandbox (registry + one NSMgr, no
// sandbox forwarder) with nsmfwd as the node's forwarder, an sdk NSE in the
// endpoint namespace and an sdk NSC in the client namespace.
type world struct {
	t      *testing.T
	ctx    context.Context
	dir    string
	name   string // nsmfwd's NSM name
	fwdURL string

	node, client, endpoint nsInfo

	domain *sandbox.Domain
	nse    *sandbox.EndpointEntry
	nsc    networkservice.NetworkServiceClient
	fwd    *fwdInstance
	before snapshot
	vpp    *vppapi.Process // the VPP dataplane's VPP, started once per world
}

type nsInfo struct{ name, path string }

type fwdInstance struct {
	dp   closingDataplane
	srv  *controlplane.Server
	gs   *grpc.Server
	done chan struct{}
	reg  *controlplane.Registration
	regc *grpc.ClientConn
	next *controlplane.NextHop
}

// snapshot is what must be identical before a scenario and after Close:
// links in each namespace and BPF programs machine-wide.
type snapshot struct {
	links map[string][]string
	progs []uint32
}

func newWorld(t *testing.T) *world {
	t.Helper()
	nstest.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &world{t: t, ctx: ctx, dir: t.TempDir(), name: fmt.Sprintf("nsmfwd-%d", time.Now().UnixNano()%1e9)}
	for _, ns := range []*nsInfo{&w.node, &w.client, &w.endpoint} {
		ns.name, ns.path = nstest.New(t)
	}
	w.before = w.snapshot()

	// sdk's sandbox: a registry and one NSMgr on TCP 127.0.0.1 ports, with
	// sandbox's insecure + grpcfd credentials and test tokens. The node is
	// set up without sandbox's fake forwarder: nsmfwd is the only one.
	w.domain = sandbox.NewBuilder(ctx, t).
		SetNodesCount(1).
		SetRegistryProxySupplier(nil).
		SetNSMgrProxySupplier(nil).
		SetNodeSetup(func(ctx context.Context, node *sandbox.Node, _ int) {
			node.NewNSMgr(ctx, "nsmgr-"+w.name, nil, sandbox.GenerateTestToken, nsmgr.NewServer)
		}).
		Build()
	// Registered after the namespaces' cleanups, so it runs before them
	// (and after nsmfwd's, registered later): cancel the domain and the
	// NSC's chain before the namespaces are deleted.
	t.Cleanup(func() {
		cancel()
		// sdk's servers stop asynchronously on ctx.Done; let them go before
		// goleak looks.
		time.Sleep(200 * time.Millisecond)
	})

	nsReg := w.domain.NewNSRegistryClient(ctx, sandbox.GenerateTestToken)
	if _, err := nsReg.Register(ctx, &registry.NetworkService{Name: serviceName, Payload: payload.Ethernet}); err != nil {
		t.Fatalf("register network service: %v", err)
	}

	// nsmfwd.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.fwdURL = "tcp://" + lis.Addr().String()
	w.startForwarder(lis)
	w.waitForwarderRegistered()

	// The NSE: sdk's endpoint chain with the KERNEL mechanism and
	// point-to-point IPAM, answering with the endpoint namespace.
	_, p2p, _ := net.ParseCIDR("172.16.77.0/24")
	w.nse = w.domain.Nodes[0].NewEndpoint(ctx, &registry.NetworkServiceEndpoint{
		Name:                "nse-" + w.name,
		NetworkServiceNames: []string{serviceName},
	}, sandbox.GenerateTestToken,
		point2pointipam.NewServer(p2p),
		mechanisms.NewServer(map[string]networkservice.NetworkServiceServer{
			kernelmech.MECHANISM: chain.NewNetworkServiceServer(
				kernel.NewServer(kernel.WithInterfaceName(endpointIf)),
				&setNetNSServer{url: netNSURL(w.endpoint.name)},
			),
		}),
	)

	// The NSC: sdk's client chain with the KERNEL mechanism client, asking
	// for its interface in the client namespace.
	w.nsc = w.newNSC(ctx)
	return w
}

// newNSC returns sdk's client chain toward the node's NSMgr, built as
// sandbox.Node.NewClient builds it but without its retry wrapper (so a
// failure reaches the test at once) and without heal (the scenarios check
// nsmfwd's own refresh, restart and failure semantics).
func (w *world) newNSC(ctx context.Context) networkservice.NetworkServiceClient {
	return client.NewClient(ctx,
		client.WithName("nsc-"+w.name),
		client.WithClientURL(sandbox.CloneURL(w.domain.Nodes[0].NSMgr.URL)),
		client.WithDialOptions(sandbox.DialOptions(sandbox.WithTokenGenerator(sandbox.GenerateTestToken))...),
		client.WithDialTimeout(sandbox.DialTimeout),
		client.WithAuthorizeClient(authorize.NewClient(authorize.Any())),
		client.WithAdditionalFunctionality(
			kernel.NewClient(kernel.WithInterfaceName(clientIf)),
			&setNetNSClient{url: netNSURL(w.client.name)},
		),
	)
}

func netNSURL(nsName string) string {
	return (&url.URL{Scheme: "file", Path: filepath.Join("/run/netns", nsName)}).String()
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NSMFWD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// startForwarder starts nsmfwd (kernel dataplane + control plane) on lis,
// on the world's state directory, and registers it through NSMgr; called
// again after stopForwarder it is a restart.
func (w *world) startForwarder(lis net.Listener) {
	t := w.t
	t.Helper()
	store, err := forwarder.OpenStore(filepath.Join(w.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	dp := w.newDataplane(t)
	nsmgrURL := w.domain.Nodes[0].NSMgr.URL.String()
	dialOpts := sandbox.DialOptions(sandbox.WithTokenGenerator(sandbox.GenerateTestToken))
	regc, err := controlplane.NewClient(nsmgrURL, dialOpts...)
	if err != nil {
		t.Fatal(err)
	}
	// The next hop is nsmfwd's own, as cmd/nsmfwd wires it: endpoints found
	// through NSMgr's registry, NSMgr itself as the fallback.
	nh := controlplane.NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(regc), networkservice.NewNetworkServiceClient(regc), dialOpts...)
	srv, err := controlplane.New(controlplane.Options{
		Name:      w.name,
		Dataplane: dp,
		NextHop:   nh,
		Store:     store,
		Logger:    testLogger(t),
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
	inst := &fwdInstance{dp: dp, srv: srv, gs: gs, done: make(chan struct{}), regc: regc, next: nh}
	go func() { defer close(inst.done); _ = gs.Serve(lis) }()
	inst.reg = controlplane.Register(controlplane.RegistrationOptions{
		Client: registry.NewNetworkServiceEndpointRegistryClient(regc),
		Name:   w.name,
		Labels: map[string]string{"p2p": "true"},
		URL:    w.fwdURL,
		Logger: testLogger(t),
	})
	w.fwd = inst
	t.Cleanup(func() { w.stopInstance(inst) })
}

// stopForwarder stops nsmfwd as a crash does as far as the node is
// concerned: no Close, no teardown; the datapath and state stay.
func (w *world) stopForwarder() { w.stopInstance(w.fwd) }

func (w *world) stopInstance(inst *fwdInstance) {
	if inst == nil || inst.gs == nil {
		return
	}
	inst.reg.Close()
	inst.gs.Stop()
	<-inst.done
	inst.srv.Shutdown()
	inst.next.CloseConns()
	_ = inst.regc.Close()
	_ = inst.dp.Close()
	inst.gs = nil
}

func (w *world) restartForwarder() {
	w.t.Helper()
	w.stopForwarder()
	_, addr, _ := controlplane.ParseURL(w.fwdURL)
	var lis net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		w.t.Fatalf("listen again on %s: %v", addr, err)
	}
	w.startForwarder(lis)
	w.waitForwarderRegistered()
}

// waitForwarderRegistered waits until NSMgr finds nsmfwd among the
// forwarders of its node, with nsmfwd's own URL.
func (w *world) waitForwarderRegistered() {
	w.t.Helper()
	nseClient := registry.NewNetworkServiceEndpointRegistryClient(w.fwd.regc)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		stream, err := nseClient.Find(ctx, &registry.NetworkServiceEndpointQuery{
			NetworkServiceEndpoint: &registry.NetworkServiceEndpoint{
				Name:                w.name,
				NetworkServiceNames: []string{controlplane.DefaultForwarderService},
				Url:                 w.domain.Nodes[0].NSMgr.URL.String(),
			},
		})
		var found bool
		if err == nil {
			for _, n := range registry.ReadNetworkServiceEndpointList(stream) {
				found = found || (n.GetName() == w.name && n.GetUrl() == w.fwdURL)
			}
		}
		cancel()
		if found {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("NSMgr does not list forwarder %s at %s (last error %v)", w.name, w.fwdURL, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *world) snapshot() snapshot {
	s := snapshot{links: map[string][]string{}}
	for _, ns := range []nsInfo{w.node, w.client, w.endpoint} {
		s.links[ns.name] = nstest.Links(w.t, ns.path)
	}
	s.progs = nstest.BPFProgIDs(w.t)
	slices.Sort(s.progs)
	return s
}

func (w *world) sameAsBefore(now snapshot) bool {
	for k, v := range w.before.links {
		if !slices.Equal(v, now.links[k]) {
			return false
		}
	}
	return slices.Equal(w.before.progs, now.progs)
}

// requireClean fails unless links and BPF programs are as before the
// scenario; kernel teardown is asynchronous (RCU), so it polls briefly.
func (w *world) requireClean(what string) {
	w.t.Helper()
	var now snapshot
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		now = w.snapshot()
		if w.sameAsBefore(now) || time.Now().After(deadline) {
			break
		}
	}
	if !w.sameAsBefore(now) {
		w.t.Fatalf("%s: left behind:\nlinks before %v\nlinks after  %v\nBPF programs before %v\nBPF programs after  %v",
			what, w.before.links, now.links, w.before.progs, now.progs)
	}
}

func (w *world) callCtx() context.Context {
	ctx, cancel := context.WithTimeout(w.ctx, ctlTimeout)
	w.t.Cleanup(cancel)
	return ctx
}

// setNetNSClient names the NSC's namespace in its KERNEL preferences: sdk's
// kernel client names the calling thread's (/proc/thread-self/ns/net),
// which in a test process is the host's.
type setNetNSClient struct{ url string }

func (s *setNetNSClient) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	for _, m := range req.GetMechanismPreferences() {
		if km := kernelmech.ToMechanism(m); km != nil {
			km.SetNetNSURL(s.url)
		}
	}
	if km := kernelmech.ToMechanism(req.GetConnection().GetMechanism()); km != nil {
		km.SetNetNSURL(s.url)
	}
	return next.Client(ctx).Request(ctx, req, opts...)
}

func (s *setNetNSClient) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*emptypb.Empty, error) {
	return next.Client(ctx).Close(ctx, conn, opts...)
}

// setNetNSServer names the NSE's namespace in its KERNEL mechanism, for the
// same reason.
type setNetNSServer struct{ url string }

func (s *setNetNSServer) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	if km := kernelmech.ToMechanism(req.GetConnection().GetMechanism()); km != nil {
		km.SetNetNSURL(s.url)
	}
	return next.Server(ctx).Request(ctx, req)
}

func (s *setNetNSServer) Close(ctx context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	return next.Server(ctx).Close(ctx, conn)
}
