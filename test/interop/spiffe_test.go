package interop

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	kernelmech "github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/kernel"
	"github.com/networkservicemesh/api/pkg/api/networkservice/payload"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/client"
	"github.com/networkservicemesh/sdk/pkg/networkservice/chains/endpoint"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/authorize"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/kernel"
	"github.com/networkservicemesh/sdk/pkg/networkservice/common/mechanisms/sendfd"
	"github.com/networkservicemesh/sdk/pkg/networkservice/core/chain"
	"github.com/networkservicemesh/sdk/pkg/networkservice/ipam/point2pointipam"
	"github.com/networkservicemesh/sdk/pkg/tools/spiffejwt"
	"github.com/networkservicemesh/sdk/pkg/tools/token"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
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

const (
	trustDomain = "nsmfwd.test"
	tokenTTL    = 10 * time.Minute
)

// spiffeWorld is tier 3: nsmfwd with SPIFFE (mutual TLS with X.509 SVIDs
// from a Workload API, path tokens signed with them) between NSM sdk
// v1.18.0's own client and endpoint chains, each with its own SVID from a
// fake Workload API and NSM's default OPA policies (tokens valid, chained,
// unexpired, signed by the previous hop), talking over unix sockets with
// grpcfd so namespaces travel by descriptor.
type spiffeWorld struct {
	*world
	spire            *identitytest.WorkloadAPI
	fwdSock, nseSock string
	nseSrc           *workloadapi.X509Source
	logs             syncBuffer // nsmfwd's debug log
}

// log is nsmfwd's logger: the test's logger plus a debug copy in w.logs.
func (w *spiffeWorld) log(t *testing.T) *slog.Logger {
	return slog.New(teeHandler{testLogger(t).Handler(), slog.NewTextHandler(&w.logs, &slog.HandlerOptions{Level: slog.LevelDebug})})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// teeHandler sends records to two handlers.
type teeHandler struct{ a, b slog.Handler }

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.a.Enabled(ctx, l) || h.b.Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var errs []error
	for _, x := range []slog.Handler{h.a, h.b} {
		if x.Enabled(ctx, r.Level) {
			errs = append(errs, x.Handle(ctx, r.Clone()))
		}
	}
	return errors.Join(errs...)
}

func (h teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return teeHandler{h.a.WithAttrs(as), h.b.WithAttrs(as)}
}

func (h teeHandler) WithGroup(n string) slog.Handler {
	return teeHandler{h.a.WithGroup(n), h.b.WithGroup(n)}
}

func spiffeID(name string) string { return "spiffe://" + trustDomain + "/" + name }

func newSPIFFEWorld(t *testing.T) *spiffeWorld {
	t.Helper()
	nstest.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	w := &spiffeWorld{world: &world{t: t, ctx: ctx, dir: t.TempDir(), name: "nsmfwd-" + shortID()}}
	for _, ns := range []*nsInfo{&w.node, &w.client, &w.endpoint} {
		ns.name, ns.path = nstest.New(t)
	}
	w.before = w.snapshot()
	t.Cleanup(func() { cancel(); time.Sleep(200 * time.Millisecond) })

	var err error
	if w.spire, err = identitytest.NewWorkloadAPI(w.dir, trustDomain); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.spire.Stop)
	w.fwdSock = filepath.Join(w.dir, "fwd.sock")
	w.nseSock = filepath.Join(w.dir, "nse.sock")

	// The NSE: NSM sdk's endpoint chain with NSM's default authorization
	// policies, which verify nsmfwd's token with nsmfwd's certificate.
	w.nseSrc = w.x509Source("nse-" + w.name)
	_, p2p, _ := net.ParseCIDR("172.16.78.0/24")
	nse := endpoint.NewServer(ctx, spiffejwt.TokenGeneratorFunc(w.nseSrc, tokenTTL),
		endpoint.WithName("nse-"+w.name),
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
	gs := grpc.NewServer(grpc.Creds(grpcfd.TransportCredentials(credentials.NewTLS(mtlsServer(w.nseSrc)))))
	nse.Register(gs)
	serveUnix(t, gs, w.nseSock)

	w.startSPIFFEForwarder()
	return w
}

func shortID() string { return time.Now().Format("150405.000000")[7:] }

func mtlsServer(src *workloadapi.X509Source) *tls.Config {
	c := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeAny())
	c.MinVersion = tls.VersionTLS12
	return c
}

func mtlsClient(src *workloadapi.X509Source) *tls.Config {
	c := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeAny())
	c.MinVersion = tls.VersionTLS12
	return c
}

// x509Source gives name its own socket on the fake Workload API and
// returns go-spiffe's source reading it.
func (w *spiffeWorld) x509Source(name string) *workloadapi.X509Source {
	w.t.Helper()
	sock, err := w.spire.Socket(name, spiffeID(name))
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(sock)))
	if err != nil {
		w.t.Fatalf("X.509 source for %s: %v", name, err)
	}
	w.t.Cleanup(func() { _ = src.Close() })
	return src
}

// sdkDialOptions are the dial options of NSM's cmd-* binaries: mTLS with
// the SVID, grpcfd, and NSM sdk's own per-call token.
func sdkDialOptions(src *workloadapi.X509Source) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(grpcfd.TransportCredentials(credentials.NewTLS(mtlsClient(src)))),
		grpc.WithDefaultCallOptions(grpc.PerRPCCredentials(token.NewPerRPCCredentials(spiffejwt.TokenGeneratorFunc(src, tokenTTL)))),
		grpcfd.WithChainStreamInterceptor(),
		grpcfd.WithChainUnaryInterceptor(),
	}
}

func serveUnix(t *testing.T, gs *grpc.Server, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(l) }()
	t.Cleanup(func() { gs.Stop(); <-done })
}

// startSPIFFEForwarder starts nsmfwd as cmd/nsmfwd wires it with
// SPIFFE_ENDPOINT_SOCKET: identity from the Workload API, mTLS + grpcfd
// server, next hop (the NSE, which serves no registry) dialled with the
// same identity.
func (w *spiffeWorld) startSPIFFEForwarder() {
	t := w.t
	sock, err := w.spire.Socket("forwarder", spiffeID(w.name))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	id, closer, err := identity.FromWorkloadAPI(ctx, sock, tokenTTL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closer.Close() })
	if id.Self() != spiffeID(w.name) {
		t.Fatalf("forwarder identity %q, want %q", id.Self(), spiffeID(w.name))
	}
	store, err := forwarder.OpenStore(filepath.Join(w.dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	dp := w.newDataplane(t)
	t.Cleanup(func() { _ = dp.Close() })
	next, err := controlplane.NewClient("unix://"+w.nseSock, id.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = next.Close() })
	nh := controlplane.NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(next), networkservice.NewNetworkServiceClient(next), id.DialOptions()...)
	t.Cleanup(nh.CloseConns)
	srv, err := controlplane.New(controlplane.Options{Name: w.name, Dataplane: dp, NextHop: nh, Store: store, Identity: id, Logger: w.log(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	gs := grpc.NewServer(id.ServerOptions()...)
	srv.Register(gs)
	serveUnix(t, gs, w.fwdSock)
	w.fwd = &fwdInstance{srv: srv}
}

// nsc returns NSM sdk's client chain as name, with NSM's default client
// policies (the forwarder's token must be signed by the forwarder's
// certificate), sending its namespace by descriptor.
func (w *spiffeWorld) nsc(name string) networkservice.NetworkServiceClient {
	src := w.x509Source(name)
	return client.NewClient(w.ctx,
		client.WithName(name),
		client.WithClientURL(&url.URL{Scheme: "unix", Path: w.fwdSock}),
		client.WithDialOptions(sdkDialOptions(src)...),
		client.WithDialTimeout(5*time.Second),
		client.WithAuthorizeClient(authorize.NewClient()),
		client.WithoutRefresh(),
		client.WithAdditionalFunctionality(
			kernel.NewClient(kernel.WithInterfaceName(clientIf)),
			&setNetNSClient{url: netNSURL(w.client.name)},
			sendfd.NewClient(),
		),
	)
}

// raw returns plain gRPC clients toward nsmfwd as name, with its SVID and
// NSM sdk's token (no sdk chain, so any connection can be sent).
func (w *spiffeWorld) raw(name string) (networkservice.NetworkServiceClient, networkservice.MonitorConnectionClient) {
	src := w.x509Source(name)
	cc, err := grpc.NewClient("unix://"+w.fwdSock, sdkDialOptions(src)...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = cc.Close() })
	return networkservice.NewNetworkServiceClient(cc), networkservice.NewMonitorConnectionClient(cc)
}

// TestSPIFFEInterop is tier 3 (see spiffeWorld).
func TestSPIFFEInterop(t *testing.T) { forEachDataplane(t, testSPIFFEInterop) }

func testSPIFFEInterop(t *testing.T) {
	w := newSPIFFEWorld(t)
	alice := w.nsc("nsc-a")
	req := &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{
		Id: "nsc-conn-" + w.name, NetworkService: serviceName, Payload: payload.Ethernet,
	}}
	conn, err := alice.Request(w.callCtx(), req)
	if err != nil {
		t.Fatalf("NSC Request over mTLS: %v", err)
	}
	w.checkWire(conn)
	w.pingBothWays(conn)
	// Both namespaces reached nsmfwd by descriptor (grpcfd): the NSC's
	// from sdk's sendfd client, the NSE's from sdk's sendfd server.
	if n := strings.Count(w.logs.String(), "network namespace received by fd passing"); n < 2 {
		t.Errorf("nsmfwd received %d namespaces by fd passing, want the client's and the endpoint's", n)
	}
	segs := conn.GetPath().GetPathSegments()
	if len(segs) != 3 || segs[1].GetName() != w.name {
		t.Fatalf("path %v: want NSC, nsmfwd, NSE", segs)
	}
	// nsmfwd's segment carries a JWT signed with its SVID for the NSE,
	// which NSM's NSE policies and NSC policies both verified already.
	claims := jwtClaims(t, segs[1].GetToken())
	if claims["sub"] != spiffeID(w.name) || !strings.Contains(claims["aud"], spiffeID("nse-"+w.name)) {
		t.Errorf("nsmfwd's token: sub %q aud %q, want sub %s aud %s", claims["sub"], claims["aud"], spiffeID(w.name), spiffeID("nse-"+w.name))
	}
	t.Logf("path tokens: nsc sub=%s aud=%s; nsmfwd sub=%s aud=%s", jwtClaims(t, segs[0].GetToken())["sub"], jwtClaims(t, segs[0].GetToken())["aud"], claims["sub"], claims["aud"])

	// Refresh by the owner: nothing new.
	wired := w.snapshot()
	if conn, err = alice.Request(w.callCtx(), &networkservice.NetworkServiceRequest{Connection: conn.Clone()}); err != nil {
		t.Fatalf("refresh by the owner: %v", err)
	}
	if now := w.snapshot(); !sameSnapshot(wired, now) {
		t.Fatalf("refresh changed the node:\nbefore %v %v\nafter  %v %v", wired.links, wired.progs, now.links, now.progs)
	}

	// Another identity can neither refresh nor close it, nor see it.
	bob, bobMon := w.raw("nsc-b")
	_, aliceMon := w.raw("nsc-a")
	_, fwdMon := w.raw(w.name)
	_, err = bob.Close(w.callCtx(), conn.Clone())
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Close by another SPIFFE ID: %v, want PermissionDenied", err)
	}
	t.Logf("Close by %s: %v", spiffeID("nsc-b"), err)
	if _, err := bob.Request(w.callCtx(), &networkservice.NetworkServiceRequest{Connection: conn.Clone()}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refresh by another SPIFFE ID: %v, want PermissionDenied", err)
	}
	// Bob without a token of his own sends Alice's: not signed by him.
	bobNoToken := w.rawNoToken("nsc-b2")
	if _, err := bobNoToken.Close(w.callCtx(), conn.Clone()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Close with someone else's token: %v, want Unauthenticated", err)
	}
	for name, tc := range map[string]struct {
		mc   networkservice.MonitorConnectionClient
		want int
	}{"owner": {aliceMon, 1}, "other identity": {bobMon, 0}, "forwarder's own identity": {fwdMon, 1}} {
		got, err := nsc.List(w.callCtx(), tc.mc, nil)
		if err != nil {
			t.Fatalf("%s: MonitorConnections: %v", name, err)
		}
		if len(got) != tc.want {
			t.Errorf("MonitorConnections as %s: %d connections, want %d", name, len(got), tc.want)
		}
	}
	w.pingBothWays(conn)

	// The owner's Close removes everything.
	if _, err := alice.Close(w.callCtx(), conn); err != nil {
		t.Fatalf("Close by the owner: %v", err)
	}
	w.requireClean("after Close")
}

// rawNoToken is raw without a per-call token: the caller's segment keeps
// whatever token the connection carries.
func (w *spiffeWorld) rawNoToken(name string) networkservice.NetworkServiceClient {
	src := w.x509Source(name)
	cc, err := grpc.NewClient("unix://"+w.fwdSock, grpc.WithTransportCredentials(credentials.NewTLS(mtlsClient(src))))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = cc.Close() })
	return networkservice.NewNetworkServiceClient(cc)
}

// TestSPIFFEPlaintextRefused: a client without a certificate does not get
// through nsmfwd's mTLS.
func TestSPIFFEPlaintextRefused(t *testing.T) {
	w := newSPIFFEWorld(t)
	cc, err := grpc.NewClient("unix://"+w.fwdSock, identity.PlaintextDialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(w.ctx, 3*time.Second)
	defer cancel()
	_, err = nsc.List(ctx, networkservice.NewMonitorConnectionClient(cc), nil)
	if err == nil {
		t.Fatal("plaintext MonitorConnections succeeded against the mTLS server")
	}
	t.Logf("plaintext client: %v", err)
}

// jwtClaims decodes a JWT's claims without verifying it (the sdk's
// policies did), as strings.
func jwtClaims(t *testing.T, tok string) map[string]string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not a JWT", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token payload: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("token payload: %v", err)
	}
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}
