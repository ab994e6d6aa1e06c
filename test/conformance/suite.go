package conformance

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// Run runs every scenario against the dataplane h builds.
func Run(t *testing.T, h Harness) {
	if len(h.Payloads) == 0 {
		h.Payloads = []forwarder.Payload{forwarder.PayloadEthernet, forwarder.PayloadIP}
	}
	if h.ScaleConnections == 0 {
		h.ScaleConnections = 100
	}
	for _, p := range h.Payloads {
		t.Run("PingBothWays/"+string(p), func(t *testing.T) { testPing(t, h, p) })
	}
	t.Run("RefreshCreatesNothing", func(t *testing.T) { testRefresh(t, h) })
	t.Run("CloseIsIdempotent", func(t *testing.T) { testCloseIdempotent(t, h) })
	t.Run("Expiry", func(t *testing.T) { testExpiry(t, h) })
	t.Run("Monitor", func(t *testing.T) { testMonitor(t, h) })
	t.Run("BadInput", func(t *testing.T) { testBadInput(t, h) })
	t.Run("NextHopFails", func(t *testing.T) { testNextHopFails(t, h) })
	t.Run("FailureAfterNextHop", func(t *testing.T) { testFailureAfterNextHop(t, h) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, h) })
	t.Run("Death", func(t *testing.T) { runDeath(t, h) })
	if h.ScaleConnections > 0 {
		t.Run("Scale", func(t *testing.T) {
			if h.SkipConcurrent != "" {
				t.Skip(h.SkipConcurrent)
			}
			testScale(t, h, h.ScaleConnections)
		})
	}
}

func testPing(t *testing.T, h Harness, p forwarder.Payload) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0", Payload: p})
	for _, v6 := range []bool{false, true} {
		cAddr, eAddr := addrs(t, conn, v6)
		e.ping(e.client, eAddr)
		e.ping(e.endpoint, cAddr)
	}
	seg := fwdSegment(conn, e.name)
	if seg == nil || seg.GetExpires() == nil || seg.GetToken() == "" {
		t.Fatalf("forwarder path segment missing or without token/expires: %v", conn.GetPath())
	}
	// Counters are read from the datapath: after 12 pings each way they
	// must show at least that many packets in both directions.
	list, err := nsc.List(e.ctx(), e.mon, nil)
	if err != nil {
		t.Fatal(err)
	}
	var counters map[string]uint64
	for _, c := range list {
		counters = nsc.Counters(c, e.name)
	}
	if counters["client_rx_packets"] < 12 || counters["client_tx_packets"] < 12 {
		t.Fatalf("counters after 12 pings each way: %v", counters)
	}
	if err := nsc.Close(e.ctx(), e.nsc, conn); err != nil {
		t.Fatal(err)
	}
	e.requireClean("after Close")
}

func testRefresh(t *testing.T, h Harness) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})
	during := e.snapshot()
	for range 3 {
		var err error
		conn, err = nsc.Refresh(e.ctx(), e.nsc, conn, time.Minute)
		if err != nil {
			t.Fatalf("refresh: %v", err)
		}
	}
	e.requireUnchanged("refresh", during)
	if n := len(e.fwd.srv.Connections()); n != 1 {
		t.Fatalf("forwarder holds %d connections after refreshes, want 1", n)
	}
	_, eAddr := addrs(t, conn, false)
	e.ping(e.client, eAddr)
	if err := nsc.Close(e.ctx(), e.nsc, conn); err != nil {
		t.Fatal(err)
	}
	e.requireClean("after Close")
}

func testCloseIdempotent(t *testing.T, h Harness) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})
	for i := range 2 {
		if err := nsc.Close(e.ctx(), e.nsc, conn); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	e.requireClean("after two Closes")
}

func testExpiry(t *testing.T, h Harness) {
	e := newEnv(t, h)
	e.mustRequest(nsc.RequestOptions{IfName: "nsm0", TokenLifetime: 2 * time.Second})
	deadline := time.Now().Add(15 * time.Second)
	for len(e.fwd.srv.Connections()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(e.fwd.srv.Connections()); n != 0 {
		t.Fatalf("%d connections still held 13 s after their expiry", n)
	}
	e.requireClean("after expiry")
}

func testMonitor(t *testing.T, h Harness) {
	e := newEnv(t, h)
	existing := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})

	stream, err := e.mon.MonitorConnections(e.ctx(), &networkservice.MonitorScopeSelector{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetType() != networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER || len(ev.GetConnections()) != 1 {
		t.Fatalf("first event: %v with %d connections, want INITIAL_STATE_TRANSFER with 1", ev.GetType(), len(ev.GetConnections()))
	}

	// A selector on another service filters everything out.
	other, err := nsc.List(e.ctx(), e.mon, &networkservice.MonitorScopeSelector{NetworkServices: []string{"no-such-service"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(other) != 0 {
		t.Fatalf("selector on another service listed %d connections", len(other))
	}

	second := e.mustRequest(nsc.RequestOptions{IfName: "nsm1"})
	waitEvent(t, stream, networkservice.ConnectionEventType_UPDATE, fwdSegment(second, e.name).GetId())
	if err := nsc.Close(e.ctx(), e.nsc, second); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, stream, networkservice.ConnectionEventType_DELETE, fwdSegment(second, e.name).GetId())
	if err := nsc.Close(e.ctx(), e.nsc, existing); err != nil {
		t.Fatal(err)
	}
	e.requireClean("after Close")
}

func waitEvent(t *testing.T, stream networkservice.MonitorConnection_MonitorConnectionsClient, typ networkservice.ConnectionEventType, id string) {
	t.Helper()
	for {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %v of %s: %v", typ, id, err)
		}
		if _, ok := ev.GetConnections()[id]; ok && ev.GetType() == typ {
			return
		}
	}
}

// testBadInput sends each malformed request and checks the code, that the
// message names the field, and that nothing was created.
func testBadInput(t *testing.T, h Harness) {
	e := newEnv(t, h)
	// A name already taken in the client namespace.
	if _, err := nstest.Exec(t, e.client.name, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"); err != nil {
		t.Fatal(err)
	}
	e.before = e.snapshot()
	deadPid := deadPID(t)
	kernel := func(params map[string]string) []*networkservice.Mechanism {
		return []*networkservice.Mechanism{{Cls: "LOCAL", Type: "KERNEL", Parameters: params}}
	}
	nsURL := nsc.NetNSURLFromPath(e.client.path)
	cases := []struct {
		name  string
		opts  nsc.RequestOptions
		code  codes.Code
		field string
	}{
		{"unknown mechanism", nsc.RequestOptions{Mechanisms: []*networkservice.Mechanism{{Cls: "LOCAL", Type: "CARRIER_PIGEON"}}}, codes.InvalidArgument, "mechanism"},
		{"missing inodeURL", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"name": "nsm0"})}, codes.InvalidArgument, "inodeURL"},
		{"regular file", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": "file:///etc/passwd", "name": "nsm0"})}, codes.InvalidArgument, "inodeURL"},
		{"dead pid", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": fmt.Sprintf("file:///proc/%d/ns/net", deadPid), "name": "nsm0"})}, codes.NotFound, "inodeURL"},
		{"unknown inode", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": "inode://4/1", "name": "nsm0"})}, codes.NotFound, "inodeURL"},
		{"bad URL scheme", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": "http://x/y", "name": "nsm0"})}, codes.InvalidArgument, "inodeURL"},
		{"name too long", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": nsURL, "name": "a-name-longer-than-15"})}, codes.InvalidArgument, "name"},
		{"name taken", nsc.RequestOptions{Mechanisms: kernel(map[string]string{"inodeURL": nsURL, "name": "taken0"})}, codes.AlreadyExists, "taken0"},
		{"bad payload", nsc.RequestOptions{IfName: "nsm0", Payload: forwarder.Payload("MPLS")}, codes.InvalidArgument, "payload"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			_, err := e.request(tc.opts)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != tc.code || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("got %v, want code %v with a message naming %q", err, tc.code, tc.field)
			}
		})
	}
	// Requests without a path or without expiry, sent raw.
	raw := []struct {
		name  string
		req   *networkservice.NetworkServiceRequest
		field string
	}{
		{"no connection", &networkservice.NetworkServiceRequest{}, "connection"},
		{"no path", &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{Id: "x", NetworkService: "s"},
			MechanismPreferences: kernel(map[string]string{"inodeURL": nsURL, "name": "nsm0"})}, "path"},
		{"no expires", &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{Id: "x", NetworkService: "s",
			Path: &networkservice.Path{PathSegments: []*networkservice.PathSegment{{Name: "nsc", Id: "x", Token: "t"}}}},
			MechanismPreferences: kernel(map[string]string{"inodeURL": nsURL, "name": "nsm0"})}, "expires"},
	}
	expired := nsc.NewRequest(nsc.RequestOptions{NetworkService: serviceName, NetNSURL: nsURL, IfName: "nsm0"})
	expired.GetConnection().GetPath().GetPathSegments()[0].Expires = timestamppb.New(time.Now().Add(-time.Minute))
	raw = append(raw, struct {
		name  string
		req   *networkservice.NetworkServiceRequest
		field string
	}{"expired token", expired, "expires"})
	for _, tc := range raw {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			_, err := e.nsc.Request(e.ctx(), tc.req)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("got %v, want InvalidArgument naming %q", err, tc.field)
			}
		})
	}
	if n := len(e.fwd.srv.Connections()); n != 0 {
		t.Fatalf("forwarder holds %d connections after bad input", n)
	}
	e.requireClean("after bad input")
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	out, err := nstest.Exec(t, "", "sh", "-c", "echo $$")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(out, &pid); err != nil {
		t.Fatalf("pid from %q: %v", out, err)
	}
	return pid
}

func testNextHopFails(t *testing.T, h Harness) {
	e := newEnv(t, h)
	// The endpoint refuses a service it does not serve: its code comes back
	// through the forwarder and nothing is left behind.
	_, err := e.request(nsc.RequestOptions{IfName: "nsm0", NetworkService: "refused-service"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("refused service: got %v, want the next hop's NotFound", err)
	}
	// The endpoint is gone.
	e.epServer.Stop()
	_, err = e.request(nsc.RequestOptions{IfName: "nsm0"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("dead next hop: got %v, want Unavailable", err)
	}
	if n := len(e.fwd.srv.Connections()); n != 0 {
		t.Fatalf("forwarder holds %d connections after a failed next hop", n)
	}
	e.requireClean("after next-hop failures")
}

// testFailureAfterNextHop: the next hop answers with an endpoint namespace
// that does not exist, so the forwarder fails after the next hop said yes;
// it must Close the next hop (the endpoint frees its addresses) and roll
// back its own work.
func testFailureAfterNextHop(t *testing.T, h Harness) {
	e := newEnv(t, h, withEndpointNetNSURL("inode://4/1"))
	_, err := e.request(nsc.RequestOptions{IfName: "nsm0"})
	if err == nil {
		t.Fatal("Request succeeded with an endpoint namespace that does not exist")
	}
	if n := e.ep.Leases(); n != 0 {
		t.Fatalf("endpoint still holds %d leases: the forwarder did not Close the next hop", n)
	}
	if n := len(e.fwd.srv.Connections()); n != 0 {
		t.Fatalf("forwarder holds %d connections", n)
	}
	e.requireClean("after a failure behind the next hop")
}

func testRestart(t *testing.T, h Harness) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})
	_, eAddr := addrs(t, conn, false)
	e.ping(e.client, eAddr)
	during := e.snapshot()

	e.stopForwarder()
	// The datapath does not depend on the process.
	e.ping(e.client, eAddr)

	e.startForwarder()
	// A restart must not look like a death: give the reaper time to act
	// wrongly before checking that nothing was reaped.
	time.Sleep(300 * time.Millisecond)
	list, err := nsc.List(e.ctx(), e.mon, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("after restart the forwarder lists %d connections, want 1", len(list))
	}
	conn, err = nsc.Refresh(e.ctx(), e.nsc, conn, time.Minute)
	if err != nil {
		t.Fatalf("refresh after restart: %v", err)
	}
	e.requireUnchanged("restart", during)
	e.ping(e.client, eAddr)
	if err := nsc.Close(e.ctx(), e.nsc, conn); err != nil {
		t.Fatal(err)
	}
	e.requireClean("after Close")
}

func testScale(t *testing.T, h Harness, n int) {
	e := newEnv(t, h)
	conns := make([]*networkservice.Connection, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conns[i], errs[i] = e.request(nsc.RequestOptions{IfName: fmt.Sprintf("nsm%d", i)})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("%d concurrent Requests: %v", n, err)
	}
	if got := len(e.fwd.srv.Connections()); got != n {
		t.Fatalf("forwarder holds %d connections, want %d", got, n)
	}
	// Spot-check traffic on the first and the last connection.
	for _, c := range []*networkservice.Connection{conns[0], conns[n-1]} {
		_, eAddr := addrs(t, c, false)
		e.ping(e.client, eAddr)
	}
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = nsc.Close(e.ctx(), e.nsc, conns[i])
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("Close: %v", err)
	}
	e.requireClean(fmt.Sprintf("after closing %d connections", n))
}
