package nsc

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/endpoint"
	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs register's services on a unix socket in a temporary directory
// and returns a client connection to it.
func serve(t *testing.T, register func(*grpc.Server)) *grpc.ClientConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		s.Stop()
		<-done
	})
	return cc
}

func TestNewRequestDefaults(t *testing.T) {
	req := NewRequest(RequestOptions{NetworkService: "svc", NetNSURL: "file:///run/netns/a", IfName: "nsm0", Labels: map[string]string{"app": "x"}})
	c := req.GetConnection()
	if c.GetId() == "" || c.GetPayload() != "ETHERNET" || c.GetNetworkService() != "svc" || c.GetLabels()["app"] != "x" {
		t.Fatalf("connection %v", c)
	}
	segs := c.GetPath().GetPathSegments()
	if c.GetPath().GetIndex() != 0 || len(segs) != 1 || segs[0].GetName() != "nsc" || segs[0].GetId() != c.GetId() || segs[0].GetToken() == "" {
		t.Fatalf("path %v", c.GetPath())
	}
	if d := time.Until(segs[0].GetExpires().AsTime()); d < 9*time.Minute || d > 10*time.Minute {
		t.Fatalf("expires in %v", d)
	}
	prefs := req.GetMechanismPreferences()
	if len(prefs) != 1 || prefs[0].GetType() != "KERNEL" || prefs[0].GetCls() != "LOCAL" ||
		prefs[0].GetParameters()["inodeURL"] != "file:///run/netns/a" || prefs[0].GetParameters()["name"] != "nsm0" {
		t.Fatalf("preferences %v", prefs)
	}
	// The forwarder's path rules insert its segment after ours.
	prev, err := nsmpath.Update(c, "fwd", "fwd-id")
	if err != nil || prev != 0 || c.GetPath().GetIndex() != 1 || c.GetId() != "fwd-id" {
		t.Fatalf("nsmpath.Update: prev %d index %d id %q err %v", prev, c.GetPath().GetIndex(), c.GetId(), err)
	}

	req = NewRequest(RequestOptions{ID: "id1", Name: "me", Payload: forwarder.PayloadIP, TokenLifetime: time.Minute,
		Mechanisms: []*networkservice.Mechanism{{Type: "MEMIF"}}})
	c = req.GetConnection()
	if c.GetId() != "id1" || c.GetPayload() != "IP" || c.GetPath().GetPathSegments()[0].GetName() != "me" ||
		len(req.GetMechanismPreferences()) != 1 || req.GetMechanismPreferences()[0].GetType() != "MEMIF" {
		t.Fatalf("request %v", req)
	}
	if _, ok := req.GetMechanismPreferences()[0].GetParameters()["name"]; ok {
		t.Fatal("override kept built parameters")
	}
}

func TestRequestRefreshCloseAgainstEndpoint(t *testing.T) {
	e, err := endpoint.New(endpoint.Options{Name: "nse", NetNSURL: "inode://4/5", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	client := networkservice.NewNetworkServiceClient(serve(t, e.Register))
	ctx := t.Context()

	conn, err := Request(ctx, client, RequestOptions{ID: "c1", NetworkService: "svc", NetNSURL: "file:///run/netns/a", IfName: "nsm0"})
	if err != nil {
		t.Fatal(err)
	}
	segs := conn.GetPath().GetPathSegments()
	if conn.GetId() != "c1" || conn.GetPath().GetIndex() != 0 || len(segs) != 2 || segs[1].GetName() != "nse" {
		t.Fatalf("connection id %q path %v", conn.GetId(), conn.GetPath())
	}
	oldExp := segs[0].GetExpires().AsTime()
	oldToken := segs[0].GetToken()

	time.Sleep(10 * time.Millisecond)
	ref, err := Refresh(ctx, client, conn, 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rsegs := ref.GetPath().GetPathSegments()
	if ref.GetId() != "c1" || len(rsegs) != 2 || rsegs[1].GetId() != segs[1].GetId() {
		t.Fatalf("refresh changed the path: %v", ref.GetPath())
	}
	if !rsegs[0].GetExpires().AsTime().After(oldExp) || rsegs[0].GetToken() == oldToken {
		t.Fatal("refresh did not renew the NSC token")
	}
	if !slices.Equal(ref.GetContext().GetIpContext().GetSrcIpAddrs(), conn.GetContext().GetIpContext().GetSrcIpAddrs()) {
		t.Fatal("refresh changed addresses")
	}
	if e.Leases() != 1 {
		t.Fatalf("leases %d", e.Leases())
	}
	if err := Close(ctx, client, ref); err != nil {
		t.Fatal(err)
	}
	if e.Leases() != 0 {
		t.Fatalf("leases %d after close", e.Leases())
	}

	// Errors keep their gRPC code through the wrapping.
	_, err = Request(ctx, client, RequestOptions{Mechanisms: []*networkservice.Mechanism{{Type: "MEMIF"}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("error %v, want InvalidArgument", err)
	}
	if _, err := RefreshRequest(&networkservice.Connection{}, 0); err == nil {
		t.Fatal("refresh of a connection without a path: want error")
	}
}

// fakeMonitor sends events, then waits for the client to go away.
type fakeMonitor struct {
	events []*networkservice.ConnectionEvent
	got    chan *networkservice.MonitorScopeSelector
}

func (f *fakeMonitor) MonitorConnections(sel *networkservice.MonitorScopeSelector, srv networkservice.MonitorConnection_MonitorConnectionsServer) error {
	f.got <- sel
	for _, ev := range f.events {
		if err := srv.Send(ev); err != nil {
			return err
		}
	}
	<-srv.Context().Done()
	return nil
}

func conns(ids ...string) map[string]*networkservice.Connection {
	out := make(map[string]*networkservice.Connection)
	for _, id := range ids {
		out[id] = &networkservice.Connection{Id: id}
	}
	return out
}

func TestListAndWatch(t *testing.T) {
	f := &fakeMonitor{
		got: make(chan *networkservice.MonitorScopeSelector, 10),
		events: []*networkservice.ConnectionEvent{
			{Type: networkservice.ConnectionEventType_UPDATE, Connections: conns("early")},
			{Type: networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER, Connections: conns("a", "b")},
			{Type: networkservice.ConnectionEventType_UPDATE, Connections: conns("c")},
			{Type: networkservice.ConnectionEventType_DELETE, Connections: conns("a")},
		},
	}
	mc := networkservice.NewMonitorConnectionClient(serve(t, func(s *grpc.Server) {
		networkservice.RegisterMonitorConnectionServer(s, f)
	}))
	ctx := t.Context()

	sel := &networkservice.MonitorScopeSelector{PathSegments: []*networkservice.PathSegment{{Name: "fwd"}}}
	got, err := List(ctx, mc, sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["a"] == nil || got["b"] == nil {
		t.Fatalf("List = %v", got)
	}
	if s := <-f.got; len(s.GetPathSegments()) != 1 || s.GetPathSegments()[0].GetName() != "fwd" {
		t.Fatalf("server got selector %v", s)
	}

	var types []networkservice.ConnectionEventType
	errStop := errors.New("stop")
	err = Watch(ctx, mc, nil, func(ev *networkservice.ConnectionEvent) error {
		types = append(types, ev.GetType())
		if len(types) == len(f.events) {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("Watch = %v, want the callback's error", err)
	}
	if types[1] != networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER || types[3] != networkservice.ConnectionEventType_DELETE {
		t.Fatalf("events %v", types)
	}

	wctx, cancel := context.WithCancel(ctx)
	n := 0
	err = Watch(wctx, mc, nil, func(*networkservice.ConnectionEvent) error {
		if n++; n == 2 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch after cancel = %v", err)
	}
}

func TestListErrors(t *testing.T) {
	// A server without MonitorConnection: the error carries the gRPC code.
	mc := networkservice.NewMonitorConnectionClient(serve(t, func(*grpc.Server) {}))
	_, err := List(t.Context(), mc, nil)
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("List = %v, want Unimplemented", err)
	}
}

func TestCounters(t *testing.T) {
	conn := &networkservice.Connection{Path: &networkservice.Path{PathSegments: []*networkservice.PathSegment{
		{Name: "nsc"},
		{Name: "fwd", Metrics: map[string]string{nsmpath.MetricClientRxPackets: "12", nsmpath.MetricServerDrops: "1", "note": "x"}},
		{Name: "nse", Metrics: map[string]string{"other": "5"}},
	}}}
	got := Counters(conn, "fwd")
	if len(got) != 2 || got[nsmpath.MetricClientRxPackets] != 12 || got[nsmpath.MetricServerDrops] != 1 {
		t.Fatalf("Counters(fwd) = %v", got)
	}
	if got := Counters(conn, ""); got[nsmpath.MetricClientRxPackets] != 12 {
		t.Fatalf("Counters(\"\") = %v", got)
	}
	if got := Counters(conn, "missing"); len(got) != 0 {
		t.Fatalf("Counters(missing) = %v", got)
	}
}

func TestNetNSURLs(t *testing.T) {
	if got := NetNSURLFromPath("/run/netns/a b"); got != "file:///run/netns/a%20b" {
		t.Fatalf("NetNSURLFromPath = %q", got)
	}
	ref, err := forwarder.ParseNetNSURL(NetNSURLFromPath("/run/netns/a b"))
	if err != nil || ref.Path != "/run/netns/a b" {
		t.Fatalf("round trip %+v %v", ref, err)
	}
	if got := NetNSURLFromPath("rel"); !strings.HasPrefix(got, "file:///") {
		t.Fatalf("relative path gave %q", got)
	}

	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skipf("no network namespaces here: %v", err)
	}
	u, err := InodeURL("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ref, err = forwarder.ParseNetNSURL(u)
	if err != nil || !ref.IsInode() || ref.String() != u {
		t.Fatalf("InodeURL %q: %+v %v", u, ref, err)
	}
	self, err := endpoint.SelfNetNSURL()
	if err != nil || self != u {
		t.Fatalf("endpoint.SelfNetNSURL = %q %v, want %q", self, err, u)
	}
	if _, err := InodeURL(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("want error for a missing file")
	}
}
