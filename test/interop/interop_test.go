package interop

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/networkservice/payload"
	"github.com/networkservicemesh/sdk/pkg/tools/sandbox"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestSDKInterop drives nsmfwd with NSM's own sdk components: the NSC's
// Request goes through sdk's NSMgr, which selects nsmfwd from the registry
// as the node's forwarder; nsmfwd asks the sdk NSE for the endpoint side
// and builds the vWire between the two namespaces.
func TestSDKInterop(t *testing.T) { forEachDataplane(t, testSDKInterop) }

func testSDKInterop(t *testing.T) {
	w := newWorld(t)

	conn := w.request(nil)
	w.checkPath(conn)
	w.checkWire(conn)
	w.pingBothWays(conn)

	// Refresh: the sdk client sends the connection back; nothing new.
	wired := w.snapshot()
	conn = w.request(conn)
	w.checkPath(conn)
	if now := w.snapshot(); !sameSnapshot(wired, now) {
		t.Fatalf("refresh changed the node:\nbefore %v %v\nafter  %v %v", wired.links, wired.progs, now.links, now.progs)
	}
	w.pingBothWays(conn)

	// Restart: nsmfwd stops without closing anything and a new instance
	// starts on the same state directory and URL; the datapath keeps
	// forwarding meanwhile and the NSC's next refresh is served by the new
	// instance without rebuilding anything.
	w.stopForwarder()
	w.pingBothWays(conn)
	w.restartForwarder()
	conn = w.request(conn)
	w.checkPath(conn)
	if now := w.snapshot(); !sameSnapshot(wired, now) {
		t.Fatalf("restart + refresh changed the node:\nbefore %v %v\nafter  %v %v", wired.links, wired.progs, now.links, now.progs)
	}
	w.pingBothWays(conn)

	// Close through NSMgr removes everything nsmfwd built.
	if _, err := w.nsc.Close(w.callCtx(), conn); err != nil {
		t.Fatalf("NSC Close: %v", err)
	}
	w.requireClean("after Close")
	if n := len(w.fwd.srv.Connections()); n != 0 {
		t.Fatalf("nsmfwd still holds %d connections after Close", n)
	}
}

// TestSDKInteropEndpointGone stops the sdk NSE's server (its namespace and
// interface stay) under an established connection and checks what NSM does
// through nsmfwd. Observed: nothing happens until the NSC refreshes; the
// refresh fails at once, NSMgr's discoverforwarder wrapping nsmfwd's
// Unavailable ("next hop: ... connection refused") into "all forwarders have
// failed"; nsmfwd leaves the established vWire as it was (a failed refresh
// is not a Close), and the NSC's Close removes everything even though the
// endpoint cannot be told. No DOWN event reaches the NSC before that: nsmfwd
// does not watch its next hop's MonitorConnections, so an endpoint whose
// server dies while its namespace lives is noticed only on the next refresh.
func TestSDKInteropEndpointGone(t *testing.T) { forEachDataplane(t, testSDKInteropEndpointGone) }

func testSDKInteropEndpointGone(t *testing.T) {
	w := newWorld(t)
	conn := w.request(nil)
	w.checkWire(conn)
	w.pingBothWays(conn)
	wired := w.snapshot()

	w.nse.Cancel()
	// The NSE's gRPC server stops asynchronously.
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req := &networkservice.NetworkServiceRequest{Connection: conn.Clone()}
		if _, err = w.nsc.Request(w.callCtx(), req); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("refresh with the endpoint's server stopped: want an error, got none")
	}
	t.Logf("refresh with the endpoint gone: %v", err)
	if !strings.Contains(err.Error(), "code = Unavailable desc = next hop") {
		t.Errorf("refresh error %q does not carry nsmfwd's Unavailable from its next hop", err)
	}
	if now := w.snapshot(); !sameSnapshot(wired, now) {
		t.Fatalf("failed refresh changed the node:\nbefore %v %v\nafter  %v %v", wired.links, wired.progs, now.links, now.progs)
	}
	if n := len(w.fwd.srv.Connections()); n != 1 {
		t.Fatalf("nsmfwd holds %d connections after a failed refresh, want 1", n)
	}

	if _, err := w.nsc.Close(w.callCtx(), conn); err != nil {
		t.Logf("NSC Close with the endpoint gone: %v", err)
	}
	w.requireClean("after Close with the endpoint gone")
	if n := len(w.fwd.srv.Connections()); n != 0 {
		t.Fatalf("nsmfwd still holds %d connections after Close", n)
	}
}

// request sends a new Request (conn nil) or a refresh of conn through the
// NSC.
func (w *world) request(conn *networkservice.Connection) *networkservice.Connection {
	w.t.Helper()
	req := &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{
		Id:             "nsc-conn-" + w.name,
		NetworkService: serviceName,
		Payload:        payload.Ethernet,
	}}
	if conn != nil {
		req.Connection = conn.Clone()
	}
	got, err := w.nsc.Request(w.callCtx(), req)
	if err != nil {
		w.t.Fatalf("NSC Request: %v", err)
	}
	return got
}

// checkPath checks the NSM path the NSC got back: NSC, NSMgr, nsmfwd, NSE.
func (w *world) checkPath(conn *networkservice.Connection) {
	w.t.Helper()
	var names []string
	for _, s := range conn.GetPath().GetPathSegments() {
		names = append(names, s.GetName())
		if s.GetExpires() == nil || !s.GetExpires().AsTime().After(time.Now()) {
			w.t.Errorf("path segment %q: expires %v is not in the future", s.GetName(), s.GetExpires())
		}
	}
	want := []string{"nsc-" + w.name, "nsmgr-" + w.name, w.name, "nse-" + w.name}
	if !slices.Equal(names, want) {
		w.t.Fatalf("path segments %v, want %v", names, want)
	}
	if conn.GetPath().GetIndex() != 0 {
		w.t.Errorf("path index %d at the NSC, want 0", conn.GetPath().GetIndex())
	}
	if conn.GetNetworkServiceEndpointName() != "nse-"+w.name {
		w.t.Errorf("network_service_endpoint_name %q, want %q", conn.GetNetworkServiceEndpointName(), "nse-"+w.name)
	}
	if conn.GetMechanism().GetType() != "KERNEL" {
		w.t.Errorf("NSC mechanism %v, want KERNEL", conn.GetMechanism())
	}
}

// checkWire checks that the interfaces the NSC and the NSE asked for exist
// in their namespaces and that nsmfwd's node ends are in the node one.
func (w *world) checkWire(conn *networkservice.Connection) {
	w.t.Helper()
	if l := nstest.Links(w.t, w.client.path); !slices.Contains(l, clientIf) {
		w.t.Fatalf("client namespace links %v: no %s", l, clientIf)
	}
	if l := nstest.Links(w.t, w.endpoint.path); !slices.Contains(l, endpointIf) {
		w.t.Fatalf("endpoint namespace links %v: no %s", l, endpointIf)
	}
	if n, b := len(nstest.Links(w.t, w.node.path)), len(w.before.links[w.node.name]); n != b+2 {
		w.t.Fatalf("node namespace has %d links, want %d (two node-side veth ends)", n, b+2)
	}
	if len(conn.GetContext().GetIpContext().GetSrcIpAddrs()) == 0 || len(conn.GetContext().GetIpContext().GetDstIpAddrs()) == 0 {
		w.t.Fatalf("no IP context: %v", conn.GetContext())
	}
}

func (w *world) pingBothWays(conn *networkservice.Connection) {
	w.t.Helper()
	ipc := conn.GetContext().GetIpContext()
	src := netip.MustParsePrefix(ipc.GetSrcIpAddrs()[0]).Addr()
	dst := netip.MustParsePrefix(ipc.GetDstIpAddrs()[0]).Addr()
	w.ping(w.client, dst)
	w.ping(w.endpoint, src)
}

func (w *world) ping(ns nsInfo, addr netip.Addr) {
	w.t.Helper()
	out, err := nstest.Exec(w.t, ns.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr.String())
	if err != nil {
		w.t.Fatalf("ping %s from %s: %v\n%s", addr, ns.name, err, strings.TrimSpace(out))
	}
}

func sameSnapshot(a, b snapshot) bool {
	for k, v := range a.links {
		if !slices.Equal(v, b.links[k]) {
			return false
		}
	}
	return len(a.links) == len(b.links) && slices.Equal(a.progs, b.progs)
}

// TestSDKInteropOtherIdentityCannotClose: a caller other than the one that
// created a connection (NSM's NSMgr here) can neither close nor refresh
// it. The sandbox is plaintext, so nsmfwd runs in its insecure mode, where
// a caller's identity is its path segment's name; tier 3
// (TestSPIFFEInterop) checks the same with SPIFFE IDs.
func TestSDKInteropOtherIdentityCannotClose(t *testing.T) {
	forEachDataplane(t, testSDKInteropOtherIdentityCannotClose)
}

func testSDKInteropOtherIdentityCannotClose(t *testing.T) {
	w := newWorld(t)
	conn := w.request(nil)
	w.pingBothWays(conn)

	cc, err := controlplane.NewClient(w.fwdURL, sandbox.DialOptions(sandbox.WithTokenGenerator(sandbox.GenerateTestToken))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	intruder := networkservice.NewNetworkServiceClient(cc)
	// The connection in nsmfwd's caller's frame (NSMgr's segment), sent
	// by a hop with another name.
	c := conn.Clone()
	c.Path.Index = 1
	c.Id = c.GetPath().GetPathSegments()[1].GetId()
	c.GetPath().GetPathSegments()[1].Name = "intruder-" + w.name
	_, err = intruder.Close(w.callCtx(), c)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Close by another identity: %v, want PermissionDenied", err)
	}
	t.Logf("Close by another identity: %v", err)
	if _, err := intruder.Request(w.callCtx(), &networkservice.NetworkServiceRequest{Connection: c}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("refresh by another identity: %v, want PermissionDenied", err)
	}
	if n := len(w.fwd.srv.Connections()); n != 1 {
		t.Fatalf("nsmfwd holds %d connections after refused calls, want 1", n)
	}
	w.pingBothWays(conn)

	if _, err := w.nsc.Close(w.callCtx(), conn); err != nil {
		t.Fatalf("NSC Close: %v", err)
	}
	w.requireClean("after the owner's Close")
}
