package interop

import (
	"context"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edwarnicke/genericsync"
	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	kernelmech "github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"
	"github.com/networkservicemesh/api/pkg/api/networkservice/payload"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/client"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/endpoint"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/nsmgr"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/kernel"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/chain"
	"github.com/networkservicemesh/sdk/pkg/networkservice/ipam/point2pointipam"
	registryclient "github.com/networkservicemesh/sdk/pkg/registry/chains/client"
	registryauthorize "github.com/networkservicemesh/sdk/pkg/registry/common/authorize"
	authmonitor "github.com/networkservicemesh/sdk/pkg/tools/monitorconnection/authorize"
	"github.com/networkservicemesh/sdk/pkg/tools/spiffejwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// NSM's default registry policies, as cmd-nsmgr v1.18.0 configures them.
var registryServerPolicies = []string{"etc/nsm/opa/common/.*.rego", "etc/nsm/opa/registry/.*.rego", "etc/nsm/opa/server/.*.rego"}

// TestSPIFFEInteropNSMgr is tier 3 with NSM sdk v1.18.0's NSMgr in the
// middle, configured as cmd-nsmgr configures it: mTLS with its own SVID,
// NSM's default authorization policies for NetworkService and registry
// calls (tokens valid, chained, unexpired, previous one signed by the
// caller), Monitor authorization by SPIFFE ID. nsmfwd registers through it
// with SPIFFE, is selected as the forwarder, finds the endpoint through its
// registry and builds the vWire; an identity other than NSMgr can neither
// close nor see the connection.
func TestSPIFFEInteropNSMgr(t *testing.T) { forEachDataplane(t, testSPIFFEInteropNSMgr) }

func testSPIFFEInteropNSMgr(t *testing.T) {
	nstest.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &spiffeWorld{world: &world{t: t, ctx: ctx, dir: t.TempDir(), name: "nsmfwd-" + shortID()}}
	for _, ns := range []*nsInfo{&w.node, &w.client, &w.endpoint} {
		ns.name, ns.path = nstest.New(t)
	}
	w.before = w.snapshot()
	t.Cleanup(func() { cancel(); time.Sleep(300 * time.Millisecond) })
	var err error
	if w.spire, err = identitytest.NewWorkloadAPI(w.dir, trustDomain); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.spire.Stop)
	mgrName := "nsmgr-" + w.name
	mgrSock := filepath.Join(w.dir, "nsm.io.sock")
	mgrURL := &url.URL{Scheme: "unix", Path: mgrSock}
	w.fwdSock = filepath.Join(w.dir, "fwd.sock")
	w.nseSock = filepath.Join(w.dir, "nse.sock")

	// NSMgr, local registry only (no remote registry URL).
	mgrSrc := w.x509Source(mgrName)
	connMap := genericsync.Map[spiffeid.ID, *genericsync.Map[string, struct{}]]{}
	mgr := nsmgr.NewServer(ctx, spiffejwt.TokenGeneratorFunc(mgrSrc, tokenTTL),
		nsmgr.WithName(mgrName),
		nsmgr.WithAuthorizeServer(authorize.NewServer(authorize.WithSpiffeIDConnectionMap(&connMap))),
		nsmgr.WithAuthorizeMonitorConnectionServer(authmonitor.NewMonitorConnectionServer(authmonitor.WithSpiffeIDConnectionMap(&connMap))),
		nsmgr.WithAuthorizeNSERegistryServer(registryauthorize.NewNetworkServiceEndpointRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
		nsmgr.WithAuthorizeNSRegistryServer(registryauthorize.NewNetworkServiceRegistryServer(registryauthorize.WithPolicies(registryServerPolicies...))),
		nsmgr.WithDialOptions(sdkDialOptions(mgrSrc)...),
		nsmgr.WithDialTimeout(5*time.Second),
	)
	mgs := grpc.NewServer(grpc.Creds(grpcfd.TransportCredentials(credentials.NewTLS(mtlsServer(mgrSrc)))))
	mgr.Register(mgs)
	serveUnix(t, mgs, mgrSock)

	// nsmfwd, wired as cmd/nsmfwd wires it with SPIFFE_ENDPOINT_SOCKET and
	// NSM_CONNECT_TO=NSMgr.
	fwdSock, err := w.spire.Socket("forwarder", spiffeID(w.name))
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	id, closer, err := identity.FromWorkloadAPI(sctx, fwdSock, tokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closer.Close() })
	store, err := forwarder.OpenStore(filepath.Join(w.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	dp := w.newDataplane(t)
	t.Cleanup(func() { _ = dp.Close() })
	regc, err := controlplane.NewClient(mgrURL.String(), id.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = regc.Close() })
	nh := controlplane.NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(regc), networkservice.NewNetworkServiceClient(regc), id.DialOptions()...)
	t.Cleanup(nh.CloseConns)
	srv, err := controlplane.New(controlplane.Options{Name: w.name, Dataplane: dp, NextHop: nh, Store: store, Identity: id, Logger: w.log(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(sctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	fgs := grpc.NewServer(id.ServerOptions()...)
	srv.Register(fgs)
	serveUnix(t, fgs, w.fwdSock)
	w.fwd = &fwdInstance{srv: srv}
	reg := controlplane.Register(controlplane.RegistrationOptions{
		Client: registry.NewNetworkServiceEndpointRegistryClient(regc),
		Name:   w.name,
		Labels: map[string]string{"p2p": "true"},
		URL:    "unix://" + w.fwdSock,
		Logger: w.log(t),
		// Our socket reaches NSMgr by descriptor, as cmd/nsmfwd sends it
		// when NSM_LISTEN_ON and NSM_CONNECT_TO are unix sockets.
		SocketByFD: true,
	})
	t.Cleanup(reg.Close)

	// The NSE: sdk's endpoint chain with NSM's default policies, registered
	// through NSMgr with sdk's registry client (as cmd-nse-icmp-responder).
	nseName := "nse-" + w.name
	w.nseSrc = w.x509Source(nseName)
	_, p2p, _ := net.ParseCIDR("172.16.80.0/24")
	nse := endpoint.NewServer(ctx, spiffejwt.TokenGeneratorFunc(w.nseSrc, tokenTTL),
		endpoint.WithName(nseName),
		endpoint.WithAuthorizeServer(authorize.NewServer()),
		endpoint.WithAdditionalFunctionality(
			point2pointipam.NewServer(p2p),
			sendfd.NewServer(),
			mechanisms.NewServer(map[string]networkservice.NetworkServiceServer{
				kernelmech.MECHANISM: chain.NewNetworkServiceServer(
					kernel.NewServer(kernel.WithInterfaceName(endpointIf)),
					&setNetNSServer{url: netNSURL(w.endpoint.name)},
				),
			}),
		))
	ngs := grpc.NewServer(grpc.Creds(grpcfd.TransportCredentials(credentials.NewTLS(mtlsServer(w.nseSrc)))))
	nse.Register(ngs)
	serveUnix(t, ngs, w.nseSock)
	nsReg := registryclient.NewNetworkServiceRegistryClient(ctx,
		registryclient.WithClientURL(mgrURL), registryclient.WithDialOptions(sdkDialOptions(w.nseSrc)...))
	if _, err := nsReg.Register(w.callCtx(), &registry.NetworkService{Name: serviceName, Payload: payload.Ethernet}); err != nil {
		t.Fatalf("register network service through NSMgr: %v", err)
	}
	nseReg := registryclient.NewNetworkServiceEndpointRegistryClient(ctx,
		registryclient.WithClientURL(mgrURL), registryclient.WithDialOptions(sdkDialOptions(w.nseSrc)...),
		registryclient.WithAuthorizeNSERegistryClient(registryauthorize.NewNetworkServiceEndpointRegistryClient()))
	if _, err := nseReg.Register(w.callCtx(), &registry.NetworkServiceEndpoint{
		Name: nseName, NetworkServiceNames: []string{serviceName}, Url: "unix://" + w.nseSock,
	}); err != nil {
		t.Fatalf("register NSE through NSMgr: %v", err)
	}
	w.waitRegisteredAt(regc, w.name, "unix://"+w.fwdSock)

	// NSM's NSC through NSMgr.
	nscSrc := w.x509Source("nsc-a")
	alice := client.NewClient(ctx,
		client.WithName("nsc-a"),
		client.WithClientURL(mgrURL),
		client.WithDialOptions(sdkDialOptions(nscSrc)...),
		client.WithDialTimeout(5*time.Second),
		client.WithAuthorizeClient(authorize.NewClient()),
		client.WithoutRefresh(),
		client.WithAdditionalFunctionality(
			kernel.NewClient(kernel.WithInterfaceName(clientIf)),
			&setNetNSClient{url: netNSURL(w.client.name)},
			sendfd.NewClient(),
		),
	)
	conn, err := alice.Request(w.callCtx(), &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{
		Id: "nsc-conn-" + w.name, NetworkService: serviceName, Payload: payload.Ethernet,
	}})
	if err != nil {
		t.Fatalf("NSC Request through NSMgr (SPIFFE): %v", err)
	}
	var names []string
	for _, s := range conn.GetPath().GetPathSegments() {
		names = append(names, s.GetName())
	}
	if want := []string{"nsc-a", mgrName, w.name, nseName}; !slices.Equal(names, want) {
		t.Fatalf("path %v, want %v", names, want)
	}
	w.checkWire(conn)
	w.pingBothWays(conn)
	t.Logf("path %v; nsmfwd token sub=%s aud=%s", names, jwtClaims(t, conn.GetPath().GetPathSegments()[2].GetToken())["sub"], jwtClaims(t, conn.GetPath().GetPathSegments()[2].GetToken())["aud"])

	// NSMgr owns the connection at nsmfwd: another identity cannot close
	// it, nor see it; NSMgr's identity sees it.
	bob, bobMon := w.raw("nsc-b")
	_, mgrMon := w.raw(mgrName)
	atFwd := conn.Clone()
	atFwd.Path.Index = 1
	atFwd.Id = atFwd.GetPath().GetPathSegments()[1].GetId()
	_, err = bob.Close(w.callCtx(), atFwd)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Close at nsmfwd by another SPIFFE ID: %v, want PermissionDenied", err)
	}
	t.Logf("Close at nsmfwd by %s: %v", spiffeID("nsc-b"), err)
	for name, tc := range map[string]struct {
		mc   networkservice.MonitorConnectionClient
		want int
	}{"NSMgr": {mgrMon, 1}, "other identity": {bobMon, 0}} {
		got, err := nsc.List(w.callCtx(), tc.mc, nil)
		if err != nil {
			t.Fatalf("%s: MonitorConnections: %v", name, err)
		}
		if len(got) != tc.want {
			t.Errorf("MonitorConnections at nsmfwd as %s: %d connections, want %d", name, len(got), tc.want)
		}
	}
	w.pingBothWays(conn)

	// The NSC's Close through NSMgr removes everything.
	if _, err := alice.Close(w.callCtx(), conn); err != nil {
		t.Fatalf("NSC Close through NSMgr: %v", err)
	}
	w.requireClean("after Close through NSMgr")
}

// waitRegisteredAt waits until NSMgr's registry lists forwarder name at u.
func (w *spiffeWorld) waitRegisteredAt(regc grpc.ClientConnInterface, name, u string) {
	w.t.Helper()
	c := registry.NewNetworkServiceEndpointRegistryClient(regc)
	var lastErr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(w.ctx, time.Second)
		stream, err := c.Find(ctx, &registry.NetworkServiceEndpointQuery{NetworkServiceEndpoint: &registry.NetworkServiceEndpoint{
			Name: name, NetworkServiceNames: []string{controlplane.DefaultForwarderService},
		}})
		found := false
		if err == nil {
			for _, n := range registry.ReadNetworkServiceEndpointList(stream) {
				// NSMgr names a unix socket it passes by descriptor
				// (grpcfd) inode://DEV/INO.
				found = found || (n.GetName() == name && (n.GetUrl() == u || n.GetUrl() == inodeOf(w.t, u)))
			}
		}
		cancel()
		if found {
			return
		}
		lastErr = err
	}
	w.t.Fatalf("NSMgr does not list forwarder %s at %s (last error %v)", name, u, lastErr)
}

// inodeOf returns the inode://DEV/INO URL of the unix socket at u.
func inodeOf(t *testing.T, u string) string {
	t.Helper()
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	s, err := nsc.InodeURL(p.Path)
	if err != nil {
		return ""
	}
	return s
}
