package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestRequestNew(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	req := newRequest("nsc-1", time.Minute)
	callerExpires := req.GetConnection().GetPath().GetPathSegments()[0].GetExpires().AsTime()
	before := time.Now()
	conn, err := e.client.Request(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}

	// Returned in the caller's frame.
	if conn.GetPath().GetIndex() != 0 || conn.GetId() != "nsc-1" {
		t.Errorf("returned index %d id %q, want 0 and nsc-1", conn.GetPath().GetIndex(), conn.GetId())
	}
	segs := conn.GetPath().GetPathSegments()
	if got := []string{segs[0].GetName(), segs[1].GetName(), segs[2].GetName()}; len(segs) != 3 || !slices.Equal(got, []string{"nsmgr-1", fwdName, nseName}) {
		t.Fatalf("path segments %v, want nsmgr-1, %s, %s", segs, fwdName, nseName)
	}
	our := segs[1]
	id := our.GetId()
	if !strings.HasPrefix(our.GetToken(), fwdName+"-") {
		t.Errorf("our token %q, want prefix %q", our.GetToken(), fwdName+"-")
	}
	if exp := our.GetExpires().AsTime(); exp.Before(before.Add(DefaultMaxTokenLifetime)) || exp.After(time.Now().Add(DefaultMaxTokenLifetime)) {
		t.Errorf("our expires %v, want now+%v", exp, DefaultMaxTokenLifetime)
	}
	if our.GetMetrics()[nsmpath.MetricClientRxPackets] != "10" || our.GetMetrics()[nsmpath.MetricServerRxPackets] != "20" {
		t.Errorf("our metrics %v", our.GetMetrics())
	}
	if m := conn.GetMechanism(); m.GetType() != forwarder.MechanismKernel || m.GetParameters()[forwarder.ParamNetNSURL] != nscNetNS {
		t.Errorf("returned mechanism %v, want the client's KERNEL", m)
	} else if m.GetParameters()[forwarder.ParamIfName] != "cl-"+id[:8] {
		t.Errorf("interface name chosen by the dataplane not copied back: %v", m.GetParameters())
	}
	if conn.GetContext().GetMTU() != 1450 || conn.GetContext().GetIpContext().GetSrcIpAddrs()[0] != "172.16.0.1/32" {
		t.Errorf("context %v, want the next hop's", conn.GetContext())
	}

	// The next hop saw our frame and our preferences.
	if got, want := e.nse.Calls(""), []string{"request " + id + " index=1 mechanism=none"}; !slices.Equal(got, want) {
		t.Errorf("nse calls %q, want %q", got, want)
	}
	nreq := e.nse.LastRequest()
	if p := nreq.GetMechanismPreferences(); len(p) != 1 || p[0].GetType() != forwarder.MechanismKernel || p[0].GetCls() != forwarder.ClsLocal {
		t.Errorf("next hop preferences %v", p)
	}
	if s := nreq.GetConnection().GetPath().GetPathSegments()[1]; s.GetToken() == "" || s.GetExpires() == nil {
		t.Errorf("next hop got our segment without token/expires: %v", s)
	}

	wantCalls := []string{
		"check " + id + " client KERNEL",
		"check " + id + " endpoint KERNEL",
		"connect " + id,
	}
	if got := e.dp.Calls(""); !slices.Equal(got, wantCalls[:]) {
		// The first call is Start's reconcile.
		if len(got) == 0 || !slices.Equal(got[1:], wantCalls) {
			t.Errorf("dataplane calls %q, want reconcile then %q", got, wantCalls)
		}
	}
	want := &forwarder.Conn{
		ID:             id,
		NetworkService: "ns-1",
		Payload:        forwarder.PayloadEthernet,
		MTU:            1450,
		Client: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Params: map[string]string{forwarder.ParamNetNSURL: nscNetNS, forwarder.ParamIfName: "cl-" + id[:8]}},
			IP: forwarder.IPConfig{
				Addrs:     []netip.Prefix{netip.MustParsePrefix("172.16.0.1/32")},
				Routes:    []forwarder.Route{{Prefix: netip.MustParsePrefix("172.16.0.2/32")}},
				Neighbors: []forwarder.Neighbor{{IP: netip.MustParseAddr("172.16.0.2"), MAC: "02:00:00:00:00:02"}},
			},
		},
		Endpoint: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Params: map[string]string{forwarder.ParamNetNSURL: nseNetNS, forwarder.ParamIfName: "nsm-1"}},
			IP: forwarder.IPConfig{
				Addrs:  []netip.Prefix{netip.MustParsePrefix("172.16.0.2/32")},
				Routes: []forwarder.Route{{Prefix: netip.MustParsePrefix("172.16.0.1/32")}},
			},
		},
		Expires: callerExpires,
	}
	got := e.dp.Conn(id)
	if got == nil || !got.Expires.Equal(want.Expires) {
		t.Fatalf("dataplane conn %+v, want expires %v", got, want.Expires)
	}
	got.Expires = want.Expires
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Errorf("dataplane conn\n got %s\nwant %s", g, w)
	}

	// Our table holds it in our frame.
	conns := e.srv.Connections()
	if c, ok := conns[id]; !ok || c.GetId() != id || c.GetPath().GetIndex() != 1 {
		t.Errorf("Connections() = %v, want %s in our frame", conns, id)
	}
}

// NSM's sriovToken label reaches the dataplane as the client mechanism's
// parameter (unless the mechanism has its own), so the SR-IOV dataplane
// and the kernel+sriov router pick the pool by label.
func TestRequestSRIOVTokenLabel(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	req := newRequest("nsc-lbl", time.Minute)
	req.Connection.Labels = map[string]string{"sriovToken": "worker.domain/10G"}
	conn, err := e.client.Request(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	id := conn.GetPath().GetPathSegments()[1].GetId()
	if got := e.dp.Calls("check " + id + " client sriovToken="); !slices.Equal(got, []string{"check " + id + " client sriovToken=worker.domain/10G"}) {
		t.Fatalf("dataplane checks %q: want the label as the client mechanism's sriovToken", got)
	}
	if got := e.dp.conns[id].Client.Mechanism.Param("sriovToken"); got != "worker.domain/10G" {
		t.Fatalf("connected with sriovToken %q", got)
	}
	// A parameter of the mechanism's own wins over the label.
	req = newRequest("nsc-own", time.Minute)
	req.Connection.Labels = map[string]string{"sriovToken": "worker.domain/10G"}
	for _, m := range req.GetMechanismPreferences() {
		if m.GetType() == forwarder.MechanismKernel {
			m.Parameters["sriovToken"] = "other.domain/25G"
		}
	}
	conn, err = e.client.Request(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.GetMechanism().GetParameters()["sriovToken"]; got != "other.domain/25G" {
		t.Fatalf("sriovToken %q: want the mechanism's own", got)
	}
}

func TestRequestRefresh(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	id := conn.GetPath().GetPathSegments()[1].GetId()
	conn2, err := e.client.Request(t.Context(), refreshOf(conn, 2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if got := conn2.GetPath().GetPathSegments()[1].GetId(); got != id {
		t.Errorf("refresh changed our id %q -> %q", id, got)
	}
	if got := conn2.GetPath().GetPathSegments()[2].GetId(); got != conn.GetPath().GetPathSegments()[2].GetId() {
		t.Errorf("refresh changed the NSE id")
	}
	if got, want := e.nse.Calls("request"), []string{
		"request " + id + " index=1 mechanism=none",
		"request " + id + " index=1 mechanism=KERNEL",
	}; !slices.Equal(got, want) {
		t.Errorf("nse calls %q, want %q", got, want)
	}
	if got := e.dp.Calls("connect"); len(got) != 2 || got[0] != got[1] {
		t.Errorf("connect calls %q, want two for the same id", got)
	}
	if n := len(e.srv.Connections()); n != 1 {
		t.Errorf("%d connections after refresh, want 1", n)
	}
	// The refresh carried the interface names the dataplane chose.
	if c := e.dp.Conn(id); c.Client.Mechanism.Params[forwarder.ParamIfName] != "cl-"+id[:8] {
		t.Errorf("refresh lost the client interface name: %v", c.Client.Mechanism)
	}
	if c := e.dp.Conn(id); !c.Expires.Equal(conn2.GetPath().GetPathSegments()[0].GetExpires().AsTime()) {
		t.Errorf("refresh did not update expires")
	}
}

func TestClose(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	id := conn.GetPath().GetPathSegments()[1].GetId()
	for range 2 {
		if _, err := e.client.Close(t.Context(), conn); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.dp.Calls("disconnect"); !slices.Equal(got, []string{"disconnect " + id}) {
		t.Errorf("disconnect calls %q", got)
	}
	if got := e.nse.Calls("close"); !slices.Equal(got, []string{"close " + id}) {
		t.Errorf("nse close calls %q", got)
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Errorf("%d connections left", n)
	}
	recs, _ := e.srv.store.Load()
	if len(recs) != 0 {
		t.Errorf("state records left: %v", sortedKeys(recs))
	}
	// Unknown connections close fine.
	if _, err := e.client.Close(t.Context(), &networkservice.Connection{Id: "nope"}); err != nil {
		t.Error(err)
	}
}

func TestCloseDisconnectFailureKeepsConnection(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	e.dp.mu.Lock()
	e.dp.disconnErr = forwarder.Errorf(forwarder.CodeUnavailable, "", "vpp busy")
	e.dp.mu.Unlock()
	if _, err := e.client.Close(t.Context(), conn); codeOf(err) != codes.Unavailable {
		t.Fatalf("close err %v, want Unavailable", err)
	}
	if n := len(e.srv.Connections()); n != 1 {
		t.Fatalf("%d connections, want the connection kept for a retry", n)
	}
	if got := e.nse.Calls("close"); len(got) != 0 {
		t.Errorf("next hop closed while the vWire is still there: %q", got)
	}
	e.dp.mu.Lock()
	e.dp.disconnErr = nil
	e.dp.mu.Unlock()
	if _, err := e.client.Close(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	if n := len(e.srv.Connections()); n != 0 || len(e.nse.Calls("close")) != 1 {
		t.Errorf("retry did not close: %d connections, nse %q", n, e.nse.Calls(""))
	}
}

func TestCloseByOurID(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	if _, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute)); err != nil {
		t.Fatal(err)
	}
	for id, conn := range e.srv.Connections() {
		// Without a path the Close names no caller: refused, the
		// connection belongs to the identity that created it.
		if _, err := e.client.Close(t.Context(), &networkservice.Connection{Id: id}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Close by bare id: %v, want PermissionDenied", err)
		}
		// Our frame (Path.Index on our segment): the caller is the
		// segment before ours.
		if _, err := e.client.Close(t.Context(), conn); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Errorf("%d connections left", n)
	}
}

func TestRequestBadInput(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	past := timestamppb.New(time.Now().Add(-time.Second))
	tests := []struct {
		name  string
		edit  func(*networkservice.NetworkServiceRequest)
		field string
	}{
		{"nil connection", func(r *networkservice.NetworkServiceRequest) { r.Connection = nil }, "connection.path"},
		{"nil path", func(r *networkservice.NetworkServiceRequest) { r.Connection.Path = nil }, "connection.path"},
		{"no segments", func(r *networkservice.NetworkServiceRequest) { r.Connection.Path.PathSegments = nil }, "connection.path"},
		{"index out of range", func(r *networkservice.NetworkServiceRequest) { r.Connection.Path.Index = 3 }, "connection.path.index"},
		{"no expires", func(r *networkservice.NetworkServiceRequest) { r.Connection.Path.PathSegments[0].Expires = nil }, "connection.path.path_segments[0].expires"},
		{"expired", func(r *networkservice.NetworkServiceRequest) { r.Connection.Path.PathSegments[0].Expires = past }, "connection.path.path_segments[0].expires"},
		{"bad payload", func(r *networkservice.NetworkServiceRequest) { r.Connection.Payload = "MPLS" }, "connection.payload"},
		{"no usable mechanism", func(r *networkservice.NetworkServiceRequest) { r.MechanismPreferences = r.MechanismPreferences[:1] }, "mechanism_preferences"},
		{"no mechanism at all", func(r *networkservice.NetworkServiceRequest) { r.MechanismPreferences = nil }, "mechanism_preferences"},
		{"unknown explicit mechanism", func(r *networkservice.NetworkServiceRequest) {
			r.Connection.Mechanism = &networkservice.Mechanism{Type: "VFIO"}
		}, "connection.mechanism.type"},
		{"bad netns url", func(r *networkservice.NetworkServiceRequest) {
			r.MechanismPreferences[1].Parameters[forwarder.ParamNetNSURL] = "http://x"
		}, "mechanism_preferences[1].parameters.inodeURL"},
		{"bad interface name", func(r *networkservice.NetworkServiceRequest) {
			r.MechanismPreferences[1].Parameters[forwarder.ParamIfName] = "a/b"
		}, "mechanism_preferences[1].parameters.name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := newRequest("nsc-1", time.Minute)
			tt.edit(req)
			_, err := e.client.Request(t.Context(), req)
			if codeOf(err) != codes.InvalidArgument {
				t.Fatalf("err %v, want InvalidArgument", err)
			}
			if !strings.Contains(status.Convert(err).Message(), tt.field) {
				t.Errorf("message %q does not name %q", status.Convert(err).Message(), tt.field)
			}
		})
	}
	if got := e.dp.Calls("connect"); len(got) != 0 {
		t.Errorf("connect called: %q", got)
	}
	if got := e.nse.Calls(""); len(got) != 0 {
		t.Errorf("next hop called: %q", got)
	}
	if got := e.dp.Calls("check"); len(got) != 0 {
		t.Errorf("check called: %q", got)
	}
}

func TestRequestEmptyNetworkServiceAndIPPayload(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	req := newRequest("nsc-1", time.Minute)
	req.Connection.NetworkService = ""
	req.Connection.Payload = "IP"
	conn, err := e.client.Request(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if c := e.dp.Conn(conn.GetPath().GetPathSegments()[1].GetId()); c.Payload != forwarder.PayloadIP || c.NetworkService != "" {
		t.Errorf("conn payload %q network service %q", c.Payload, c.NetworkService)
	}
}

func TestCheckFailure(t *testing.T) {
	for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
		t.Run(string(side), func(t *testing.T) {
			e := newEnv(t, "", nil, nil)
			e.dp.checkErr[side] = forwarder.Errorf(forwarder.CodeAlreadyExists, "name", "interface taken")
			_, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
			if codeOf(err) != codes.AlreadyExists {
				t.Fatalf("err %v, want AlreadyExists", err)
			}
			if got := e.dp.Calls("connect"); len(got) != 0 {
				t.Errorf("connect called: %q", got)
			}
			wantNSE := 0
			if side == forwarder.SideEndpoint {
				wantNSE = 1 // the endpoint side is checked once the next hop answered
				if got := e.nse.Calls("close"); len(got) != 1 {
					t.Errorf("next hop not closed: %q", e.nse.Calls(""))
				}
			}
			if got := e.nse.Calls("request"); len(got) != wantNSE {
				t.Errorf("next hop requests %q, want %d", got, wantNSE)
			}
			if n := len(e.srv.Connections()); n != 0 {
				t.Errorf("%d connections", n)
			}
		})
	}
}

func TestNextHopFailure(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	e.nse.err = status.Error(codes.PermissionDenied, "policy says no")
	_, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if codeOf(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "next hop: policy says no") {
		t.Fatalf("err %v, want PermissionDenied from the next hop", err)
	}
	if got := e.dp.Calls("connect"); len(got) != 0 {
		t.Errorf("connect called: %q", got)
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Errorf("%d connections", n)
	}
	if recs, _ := e.srv.store.Load(); len(recs) != 0 {
		t.Errorf("records left")
	}
}

// A next hop that answers too late may have built the connection after we
// gave up: it gets a Close so it holds no ghost.
func TestNextHopTimeoutClosesNextHop(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	e.nse.err = status.Error(codes.DeadlineExceeded, "too slow")
	_, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if codeOf(err) != codes.DeadlineExceeded {
		t.Fatalf("err %v, want DeadlineExceeded", err)
	}
	calls := strings.Join(e.nse.Calls("close"), "\n")
	if !strings.Contains(calls, "close ") {
		t.Fatalf("next hop not closed after a timeout; its calls:\n%s", calls)
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Errorf("%d connections", n)
	}
}

func TestNextHopFailureOnRefreshKeepsConnection(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	e.nse.mu.Lock()
	e.nse.err = status.Error(codes.Unavailable, "gone")
	e.nse.mu.Unlock()
	if _, err := e.client.Request(t.Context(), refreshOf(conn, time.Minute)); codeOf(err) != codes.Unavailable {
		t.Fatalf("err %v, want Unavailable", err)
	}
	if n := len(e.srv.Connections()); n != 1 {
		t.Errorf("%d connections, want the existing one kept", n)
	}
	if got := e.dp.Calls("disconnect"); len(got) != 0 {
		t.Errorf("disconnect called: %q", got)
	}
}

func TestBadNextHopContext(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	e.nse.badIPCtx = true
	_, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if codeOf(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "dst_ip_addrs[0]") {
		t.Fatalf("err %v, want InvalidArgument naming dst_ip_addrs[0]", err)
	}
	if got := e.nse.Calls("close"); len(got) != 1 {
		t.Errorf("next hop not closed: %q", e.nse.Calls(""))
	}
	if got := e.dp.Calls("connect"); len(got) != 0 {
		t.Errorf("connect called: %q", got)
	}
}

func TestConnectFailure(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	e.dp.connectErr = forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "netns gone")
	_, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if codeOf(err) != codes.FailedPrecondition {
		t.Fatalf("err %v, want FailedPrecondition", err)
	}
	req := e.nse.LastRequest()
	id := req.GetConnection().GetId()
	if got := e.nse.Calls("close"); !slices.Equal(got, []string{"close " + id}) {
		t.Errorf("next hop close calls %q", got)
	}
	if got := e.dp.Calls("disconnect"); !slices.Equal(got, []string{"disconnect " + id}) {
		t.Errorf("disconnect calls %q", got)
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Errorf("%d connections", n)
	}
	if recs, _ := e.srv.store.Load(); len(recs) != 0 {
		t.Errorf("records left")
	}
}

func TestConcurrentRequests(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			_, err := e.client.Request(t.Context(), newRequest(fmt.Sprintf("nsc-%d", i), time.Minute))
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := len(e.srv.Connections()); got != n {
		t.Errorf("%d connections, want %d", got, n)
	}
	if got := len(e.dp.Calls("connect")); got != n {
		t.Errorf("%d connects, want %d", got, n)
	}
}

func TestMonitor(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn1, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	id1 := conn1.GetPath().GetPathSegments()[1].GetId()

	all, err := e.monitor.MonitorConnections(t.Context(), &networkservice.MonitorScopeSelector{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.monitor.MonitorConnections(t.Context(), &networkservice.MonitorScopeSelector{NetworkServices: []string{"ns-2"}})
	if err != nil {
		t.Fatal(err)
	}
	bySeg, err := e.monitor.MonitorConnections(t.Context(), &networkservice.MonitorScopeSelector{
		PathSegments: []*networkservice.PathSegment{{Name: fwdName, Id: id1}},
	})
	if err != nil {
		t.Fatal(err)
	}

	ev, err := all.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetType() != networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER || !slices.Equal(sortedKeys(ev.GetConnections()), []string{id1}) {
		t.Fatalf("initial %v, want %s", ev, id1)
	}
	c := ev.GetConnections()[id1]
	if c.GetId() != id1 || c.GetPath().GetIndex() != 1 || c.GetCurrentPathSegment().GetMetrics()[nsmpath.MetricClientRxBytes] != "1000" {
		t.Errorf("initial connection not in our frame with metrics: %v", c)
	}
	if ev, err := other.Recv(); err != nil || len(ev.GetConnections()) != 0 {
		t.Fatalf("filtered initial %v %v, want empty", ev, err)
	}
	if ev, err := bySeg.Recv(); err != nil || !slices.Equal(sortedKeys(ev.GetConnections()), []string{id1}) {
		t.Fatalf("segment-filtered initial %v %v", ev, err)
	}

	req2 := newRequest("nsc-2", time.Minute)
	req2.Connection.NetworkService = "ns-2"
	conn2, err := e.client.Request(t.Context(), req2)
	if err != nil {
		t.Fatal(err)
	}
	id2 := conn2.GetPath().GetPathSegments()[1].GetId()
	for name, st := range map[string]networkservice.MonitorConnection_MonitorConnectionsClient{"all": all, "ns-2": other} {
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetType() != networkservice.ConnectionEventType_UPDATE || !slices.Equal(sortedKeys(ev.GetConnections()), []string{id2}) {
			t.Errorf("%s: event %v, want UPDATE of %s", name, ev, id2)
		}
	}

	if _, err := e.client.Close(t.Context(), conn1); err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]networkservice.MonitorConnection_MonitorConnectionsClient{"all": all, "segment": bySeg} {
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetType() != networkservice.ConnectionEventType_DELETE || !slices.Equal(sortedKeys(ev.GetConnections()), []string{id1}) {
			t.Errorf("%s: event %v, want DELETE of %s", name, ev, id1)
		}
	}
	// ns-2's stream must not have seen conn1's DELETE: its next event is
	// conn2's DELETE.
	if _, err := e.client.Close(t.Context(), conn2); err != nil {
		t.Fatal(err)
	}
	ev, err = other.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetType() != networkservice.ConnectionEventType_DELETE || !slices.Equal(sortedKeys(ev.GetConnections()), []string{id2}) {
		t.Errorf("ns-2: event %v, want DELETE of %s", ev, id2)
	}
}

func TestMonitorSlowSubscriberDropped(t *testing.T) {
	e := newEnv(t, "", nil, nil, func(o *Options) { o.MonitorBuffer = 1 })
	sel := &networkservice.MonitorScopeSelector{}
	// Subscribe on the server directly with a stream that never reads.
	st := &blockedStream{ctx: t.Context(), sent: make(chan struct{}, 1), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- e.srv.MonitorConnections(sel, st) }()
	<-st.sent // initial state transfer is being sent; the stream now blocks forever.
	for i := range 3 {
		if _, err := e.client.Request(t.Context(), newRequest(fmt.Sprintf("nsc-%d", i), time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	close(st.release)
	if err := <-done; codeOf(err) != codes.ResourceExhausted {
		t.Errorf("slow subscriber ended with %v, want ResourceExhausted", err)
	}
}

func TestHealth(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	if got := healthStatus(t, e); got != "SERVING" {
		t.Errorf("health %s, want SERVING", got)
	}
	dp := newFakeDP()
	dp.readyErr = errors.New("vpp down")
	e2 := newEnv(t, "", dp, nil)
	if got := healthStatus(t, e2); got != "NOT_SERVING" {
		t.Errorf("health %s, want NOT_SERVING", got)
	}
}

func TestRestart(t *testing.T) {
	dir := t.TempDir()
	nse := newFakeNSE()
	e1 := newEnv(t, dir, nil, nse)
	keep, err := e1.client.Request(t.Context(), newRequest("nsc-keep", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e1.client.Request(t.Context(), newRequest("nsc-expire", 300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	failed, err := e1.client.Request(t.Context(), newRequest("nsc-fail", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for id, c := range e1.srv.Connections() {
		ids[c.GetPath().GetPathSegments()[0].GetId()] = id
	}
	e1.stop()
	time.Sleep(400 * time.Millisecond)

	dp2 := newFakeDP()
	dp2.failed = map[string]error{ids["nsc-fail"]: errors.New("netns gone")}
	e2 := newEnv(t, dir, dp2, nse)
	wantWanted := []string{ids["nsc-fail"], ids["nsc-keep"]}
	slices.Sort(wantWanted)
	if got := dp2.Calls("reconcile"); !slices.Equal(got, []string{"reconcile [" + strings.Join(wantWanted, " ") + "]"}) {
		t.Errorf("reconcile calls %q, want the two unexpired connections %q", got, wantWanted)
	}
	if got := sortedKeys(e2.srv.Connections()); !slices.Equal(got, []string{ids["nsc-keep"]}) {
		t.Errorf("restored %q, want only %s", got, ids["nsc-keep"])
	}
	for _, which := range []string{"nsc-expire", "nsc-fail"} {
		if got := nse.Calls("close " + ids[which]); len(got) != 1 {
			t.Errorf("%s not closed at the next hop: %q", which, got)
		}
	}
	recs, _ := e2.srv.store.Load()
	if got := sortedKeys(recs); !slices.Equal(got, []string{ids["nsc-keep"]}) {
		t.Errorf("records %q after restart", got)
	}

	// Monitor lists the survivor.
	st, err := e2.monitor.MonitorConnections(t.Context(), &networkservice.MonitorScopeSelector{})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := st.Recv(); err != nil || !slices.Equal(sortedKeys(ev.GetConnections()), []string{ids["nsc-keep"]}) {
		t.Errorf("monitor initial %v %v", ev, err)
	}

	// A refresh is a refresh: same id, no second connection, the next hop
	// gets its stored mechanism back.
	conn, err := e2.client.Request(t.Context(), refreshOf(keep, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.GetPath().GetPathSegments()[1].GetId(); got != ids["nsc-keep"] {
		t.Errorf("refresh after restart got id %q, want %q", got, ids["nsc-keep"])
	}
	if n := len(e2.srv.Connections()); n != 1 {
		t.Errorf("%d connections after refresh, want 1", n)
	}
	if m := nse.LastRequest().GetConnection().GetMechanism(); m.GetType() != forwarder.MechanismKernel {
		t.Errorf("refresh after restart sent next hop mechanism %v", m)
	}
	// A request for the failed one is new again (new id).
	conn, err = e2.client.Request(t.Context(), refreshOf(failed, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(e2.srv.Connections()); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	_ = conn
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		in, network, address string
		bad                  bool
	}{
		{in: "unix:///var/lib/nsm/nsm.io.sock", network: "unix", address: "/var/lib/nsm/nsm.io.sock"},
		{in: "tcp://127.0.0.1:5001", network: "tcp", address: "127.0.0.1:5001"},
		{in: "tcp://[::1]:5001", network: "tcp", address: "[::1]:5001"},
		{in: ":5001", network: "tcp", address: ":5001"},
		{in: "nsmgr.nsm-system:5001", network: "tcp", address: "nsmgr.nsm-system:5001"},
		{in: "", bad: true},
		{in: "unix://relative/path", bad: true},
		{in: "tcp://host", bad: true},
		{in: "http://host:80", bad: true},
		{in: "host", bad: true},
		{in: "host:http", bad: true},
		{in: "unix:relative", bad: true},
		{in: "unix:/abs.sock", network: "unix", address: "/abs.sock"},
	}
	for _, tt := range tests {
		network, address, err := ParseURL(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseURL(%q) = %q %q, want error", tt.in, network, address)
			}
			continue
		}
		if err != nil || network != tt.network || address != tt.address {
			t.Errorf("ParseURL(%q) = %q %q %v, want %q %q", tt.in, network, address, err, tt.network, tt.address)
		}
	}
}
