package endpoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testNetNS = "inode://4/4026532000"

func newEndpoint(t *testing.T, opts Options) *Endpoint {
	t.Helper()
	if opts.NetNSURL == "" {
		opts.NetNSURL = testNetNS
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// serve runs e on a unix socket in a temporary directory and returns a
// client connected to it.
func serve(t *testing.T, e *Endpoint) networkservice.NetworkServiceClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nse.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	e.Register(s)
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
	return networkservice.NewNetworkServiceClient(cc)
}

// fwdRequest is what a forwarder sends to its next hop: the path up to and
// including its own segment, and KERNEL as the only preference.
func fwdRequest(id, service string, callerExpires time.Time) *networkservice.NetworkServiceRequest {
	return &networkservice.NetworkServiceRequest{
		Connection: &networkservice.Connection{
			Id:             id + "-fwd",
			NetworkService: service,
			Payload:        "ETHERNET",
			Path: &networkservice.Path{
				Index: 1,
				PathSegments: []*networkservice.PathSegment{
					{Name: "nsc", Id: id, Expires: timestamppb.New(callerExpires.Add(time.Hour))},
					{Name: "fwd", Id: id + "-fwd", Expires: timestamppb.New(callerExpires)},
				},
			},
		},
		MechanismPreferences: []*networkservice.Mechanism{{Cls: "LOCAL", Type: "KERNEL", Parameters: map[string]string{}}},
	}
}

func refreshOf(conn *networkservice.Connection, callerExpires time.Time) *networkservice.NetworkServiceRequest {
	c := conn.Clone()
	c.GetPath().GetPathSegments()[c.GetPath().GetIndex()].Expires = timestamppb.New(callerExpires)
	return &networkservice.NetworkServiceRequest{Connection: c, MechanismPreferences: []*networkservice.Mechanism{{Type: "KERNEL"}}}
}

func ips(c *networkservice.Connection) (src, dst []string) {
	return c.GetContext().GetIpContext().GetSrcIpAddrs(), c.GetContext().GetIpContext().GetDstIpAddrs()
}

func routes(rs []*networkservice.Route) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.GetPrefix())
	}
	return out
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("error %v: code %v, want %v", err, status.Code(err), code)
	}
}

func TestRequestAllocatesAndRefreshKeeps(t *testing.T) {
	e := newEndpoint(t, Options{
		Name:           "nse-a",
		NetworkService: "svc",
		CIDRs:          []netip.Prefix{netip.MustParsePrefix("10.0.0.0/29"), netip.MustParsePrefix("fd00:5::/120")},
	})
	client := serve(t, e)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)

	c1, err := client.Request(ctx, fwdRequest("c1", "svc", exp))
	if err != nil {
		t.Fatal(err)
	}
	src, dst := ips(c1)
	if want := []string{"10.0.0.2/32", "fd00:5::2/128"}; !slices.Equal(src, want) {
		t.Errorf("src addrs %q, want %q", src, want)
	}
	if want := []string{"10.0.0.1/32", "fd00:5::1/128"}; !slices.Equal(dst, want) {
		t.Errorf("dst addrs %q, want %q", dst, want)
	}
	ipc := c1.GetContext().GetIpContext()
	if got, want := routes(ipc.GetSrcRoutes()), dst; !slices.Equal(got, want) {
		t.Errorf("src routes %q, want %q", got, want)
	}
	if got, want := routes(ipc.GetDstRoutes()), src; !slices.Equal(got, want) {
		t.Errorf("dst routes %q, want %q", got, want)
	}

	// Path: the caller's frame is restored, our segment appended with a token.
	if c1.GetPath().GetIndex() != 1 || c1.GetId() != "c1-fwd" || len(c1.GetPath().GetPathSegments()) != 3 {
		t.Fatalf("path index %d id %q segments %d", c1.GetPath().GetIndex(), c1.GetId(), len(c1.GetPath().GetPathSegments()))
	}
	seg := c1.GetPath().GetPathSegments()[2]
	if seg.GetName() != "nse-a" || seg.GetId() == "" || seg.GetToken() == "" || seg.GetExpires() == nil {
		t.Fatalf("endpoint segment %v", seg)
	}
	if d := time.Until(seg.GetExpires().AsTime()); d < 9*time.Minute || d > 11*time.Minute {
		t.Errorf("endpoint token expires in %v, want about %v", d, DefaultMaxTokenLifetime)
	}

	// Mechanism: KERNEL in our namespace with a stable short name.
	m := c1.GetMechanism()
	name := m.GetParameters()[forwarder.ParamIfName]
	if m.GetType() != "KERNEL" || m.GetCls() != "LOCAL" || m.GetParameters()[forwarder.ParamNetNSURL] != testNetNS {
		t.Errorf("mechanism %v", m)
	}
	if err := forwarder.ValidateIfName(name); err != nil || name[:4] != "nse-" {
		t.Errorf("interface name %q: %v", name, err)
	}

	c2, err := client.Request(ctx, fwdRequest("c2", "svc", exp))
	if err != nil {
		t.Fatal(err)
	}
	src2, dst2 := ips(c2)
	for _, a := range append(slices.Clone(src2), dst2...) {
		if slices.Contains(src, a) || slices.Contains(dst, a) {
			t.Errorf("address %s given to both connections", a)
		}
	}
	if c2.GetMechanism().GetParameters()[forwarder.ParamIfName] == name {
		t.Errorf("both connections got interface %q", name)
	}
	if e.Leases() != 2 {
		t.Fatalf("leases %d, want 2", e.Leases())
	}

	// Refresh: same segment id, same addresses, same name.
	r1, err := client.Request(ctx, refreshOf(c1, exp.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	rsrc, rdst := ips(r1)
	if !slices.Equal(rsrc, src) || !slices.Equal(rdst, dst) {
		t.Errorf("refresh changed addresses: %q %q, want %q %q", rsrc, rdst, src, dst)
	}
	if len(routes(r1.GetContext().GetIpContext().GetSrcRoutes())) != 2 {
		t.Errorf("refresh duplicated routes: %q", routes(r1.GetContext().GetIpContext().GetSrcRoutes()))
	}
	if r1.GetPath().GetPathSegments()[2].GetId() != seg.GetId() || len(r1.GetPath().GetPathSegments()) != 3 {
		t.Errorf("refresh changed the endpoint segment")
	}
	if got := r1.GetMechanism().GetParameters()[forwarder.ParamIfName]; got != name {
		t.Errorf("refresh renamed interface %q to %q", name, got)
	}
	if e.Leases() != 2 {
		t.Fatalf("leases %d after refresh, want 2", e.Leases())
	}

	// Close frees: a new connection gets c1's addresses back.
	if _, err := client.Close(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if e.Leases() != 1 {
		t.Fatalf("leases %d after close, want 1", e.Leases())
	}
	c3, err := client.Request(ctx, fwdRequest("c3", "svc", exp))
	if err != nil {
		t.Fatal(err)
	}
	if s3, d3 := ips(c3); !slices.Equal(s3, src) || !slices.Equal(d3, dst) {
		t.Errorf("after close got %q %q, want the freed %q %q", s3, d3, src, dst)
	}
	// Closing twice, or something unknown, is fine.
	for _, c := range []*networkservice.Connection{r1, {Id: "nope"}} {
		if _, err := client.Close(ctx, c); err != nil {
			t.Fatalf("close %q: %v", c.GetId(), err)
		}
	}
}

func TestRequestErrors(t *testing.T) {
	e := newEndpoint(t, Options{NetworkService: "svc", CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")}})
	client := serve(t, e)
	ctx := t.Context()
	exp := time.Now().Add(time.Minute)

	_, err := client.Request(ctx, fwdRequest("wrong", "other", exp))
	wantCode(t, err, codes.NotFound)

	req := fwdRequest("memif", "svc", exp)
	req.MechanismPreferences = []*networkservice.Mechanism{{Cls: "LOCAL", Type: "MEMIF"}}
	_, err = client.Request(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	req = fwdRequest("none", "svc", exp)
	req.MechanismPreferences = nil
	_, err = client.Request(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	req = fwdRequest("badname", "svc", exp)
	req.MechanismPreferences[0].Parameters[forwarder.ParamIfName] = "a/very/long/name/indeed"
	_, err = client.Request(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	req = fwdRequest("badpath", "svc", exp)
	req.Connection.Path.Index = 7
	_, err = client.Request(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	// A /30 has two host addresses: one connection.
	if _, err := client.Request(ctx, fwdRequest("first", "svc", exp)); err != nil {
		t.Fatal(err)
	}
	_, err = client.Request(ctx, fwdRequest("second", "svc", exp))
	wantCode(t, err, codes.ResourceExhausted)
	if e.Leases() != 1 {
		t.Fatalf("leases %d, want 1 (failed requests hold nothing)", e.Leases())
	}
}

func TestRequestKeepsMechanismAndName(t *testing.T) {
	e := newEndpoint(t, Options{})
	client := serve(t, e)
	req := fwdRequest("named", "any", time.Now().Add(time.Minute))
	req.MechanismPreferences = []*networkservice.Mechanism{{Type: "MEMIF"}, {Type: "KERNEL", Parameters: map[string]string{"name": "eth1", "inodeURL": "file:///proc/1/ns/net"}}}
	c, err := client.Request(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	p := c.GetMechanism().GetParameters()
	if p["name"] != "eth1" || p["inodeURL"] != testNetNS {
		t.Fatalf("parameters %v: want the requested name and our namespace", p)
	}
	if c.GetContext().GetIpContext() != nil && len(c.GetContext().GetIpContext().GetSrcIpAddrs()) != 0 {
		t.Fatalf("no CIDRs but addresses %v", c.GetContext().GetIpContext())
	}
	// A refresh without preferences keeps the mechanism the connection has.
	r, err := client.Request(t.Context(), &networkservice.NetworkServiceRequest{Connection: c})
	if err != nil {
		t.Fatal(err)
	}
	if r.GetMechanism().GetParameters()["name"] != "eth1" {
		t.Fatalf("refresh mechanism %v", r.GetMechanism())
	}
}

func TestRequestReclaimsAfterRestart(t *testing.T) {
	opts := Options{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}
	e1 := newEndpoint(t, opts)
	exp := time.Now().Add(time.Minute)
	ctx := t.Context()
	if _, err := e1.Request(ctx, fwdRequest("a", "", exp)); err != nil {
		t.Fatal(err)
	}
	c, err := e1.Request(ctx, fwdRequest("b", "", exp))
	if err != nil {
		t.Fatal(err)
	}
	src, dst := ips(c)

	// A new endpoint process sees the refresh of b first: it keeps b's
	// addresses, and a later new connection does not get them.
	e2 := newEndpoint(t, opts)
	r, err := e2.Request(ctx, refreshOf(c, exp))
	if err != nil {
		t.Fatal(err)
	}
	if rs, rd := ips(r); !slices.Equal(rs, src) || !slices.Equal(rd, dst) {
		t.Fatalf("after restart got %q %q, want %q %q", rs, rd, src, dst)
	}
	n, err := e2.Request(ctx, fwdRequest("c", "", exp))
	if err != nil {
		t.Fatal(err)
	}
	if ns, nd := ips(n); slices.Contains(ns, src[0]) || slices.Contains(nd, dst[0]) || slices.Contains(ns, dst[0]) || slices.Contains(nd, src[0]) {
		t.Fatalf("new connection got reclaimed addresses %q %q", ns, nd)
	}
}

func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := New(Options{NetNSURL: testNetNS, CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")}})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Shutdown()
		ctx := t.Context()

		c, err := e.Request(ctx, fwdRequest("x", "", time.Now().Add(time.Minute)))
		if err != nil {
			t.Fatal(err)
		}
		// Refreshed at 50s for another minute: still there at 61s.
		time.Sleep(50 * time.Second)
		c, err = e.Request(ctx, refreshOf(c, time.Now().Add(time.Minute)))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if e.Leases() != 1 {
			t.Fatalf("leases %d at 61s after a refresh, want 1", e.Leases())
		}
		// Not refreshed again: gone at 110s, and the pool is free again.
		time.Sleep(50 * time.Second)
		synctest.Wait()
		if e.Leases() != 0 {
			t.Fatalf("leases %d after expiry, want 0", e.Leases())
		}
		if _, err := e.Request(ctx, fwdRequest("y", "", time.Now().Add(time.Minute))); err != nil {
			t.Fatalf("pool not freed by expiry: %v", err)
		}
		_ = c
	})
}

func TestExpiryWithoutCallerUsesTokenLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := New(Options{NetNSURL: testNetNS, MaxTokenLifetime: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Shutdown()
		// An empty path: the endpoint is the only segment.
		req := &networkservice.NetworkServiceRequest{MechanismPreferences: []*networkservice.Mechanism{{Type: "KERNEL"}}}
		c, err := e.Request(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.GetPath().GetPathSegments()) != 1 || c.GetId() == "" {
			t.Fatalf("path %v", c.GetPath())
		}
		time.Sleep(time.Minute + time.Second)
		synctest.Wait()
		if e.Leases() != 0 {
			t.Fatalf("leases %d, want 0", e.Leases())
		}
	})
}

func TestShutdown(t *testing.T) {
	e := newEndpoint(t, Options{})
	e.Shutdown()
	_, err := e.Request(t.Context(), fwdRequest("x", "", time.Now().Add(time.Minute)))
	wantCode(t, err, codes.Unavailable)
}

func TestConcurrentRequests(t *testing.T) {
	e := newEndpoint(t, Options{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}})
	client := serve(t, e)
	const n = 32
	var (
		mu   sync.Mutex
		seen = make(map[string]string)
		wg   sync.WaitGroup
	)
	exp := time.Now().Add(time.Minute)
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("conn-%d", i)
			c, err := client.Request(context.Background(), fwdRequest(id, "", exp))
			if err != nil {
				t.Error(err)
				return
			}
			src, dst := ips(c)
			mu.Lock()
			defer mu.Unlock()
			for _, a := range append(src, dst...) {
				if other, dup := seen[a]; dup {
					t.Errorf("%s given to %s and %s", a, other, id)
				}
				seen[a] = id
			}
		})
	}
	wg.Wait()
	if len(seen) != 2*n || e.Leases() != n {
		t.Fatalf("%d addresses, %d leases; want %d, %d", len(seen), e.Leases(), 2*n, n)
	}
}

func TestNewOptions(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
	}{
		{"two IPv4 pools", Options{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.1.0.0/24")}}},
		{"long prefix", Options{IfNamePrefix: "much-too-long"}},
		{"bad prefix char", Options{IfNamePrefix: "a/b"}},
		{"bad netns", Options{NetNSURL: "http://x"}},
		{"invalid CIDR", Options{CIDRs: []netip.Prefix{{}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.opts.NetNSURL == "" {
				tt.opts.NetNSURL = testNetNS
			}
			if _, err := New(tt.opts); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

func TestSelfNetNSURL(t *testing.T) {
	u, err := SelfNetNSURL()
	if err != nil {
		t.Skipf("no /proc/self/ns/net: %v", err)
	}
	ref, err := forwarder.ParseNetNSURL(u)
	if err != nil || !ref.IsInode() {
		t.Fatalf("SelfNetNSURL %q: %v %+v", u, err, ref)
	}
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.netnsURL != u {
		t.Fatalf("default NetNSURL %q, want %q", e.netnsURL, u)
	}
}

func TestPool(t *testing.T) {
	for _, tt := range []struct {
		prefix      string
		first, last string
	}{
		{"10.0.0.0/24", "10.0.0.1", "10.0.0.254"},
		{"10.0.0.7/24", "10.0.0.1", "10.0.0.254"},
		{"172.16.1.100/31", "172.16.1.100", "172.16.1.101"},
		{"10.0.0.9/32", "10.0.0.9", "10.0.0.9"},
		{"fd00:5::/120", "fd00:5::1", "fd00:5::ff"},
		{"fd00::/127", "fd00::", "fd00::1"},
	} {
		p, err := newPool(netip.MustParsePrefix(tt.prefix))
		if err != nil {
			t.Fatal(err)
		}
		if p.first.String() != tt.first || p.last.String() != tt.last {
			t.Errorf("%s: range %v-%v, want %s-%s", tt.prefix, p.first, p.last, tt.first, tt.last)
		}
	}
	p, _ := newPool(netip.MustParsePrefix("172.16.1.100/31"))
	dst, src, ok := p.pair()
	if !ok || dst.String() != "172.16.1.100" || src.String() != "172.16.1.101" {
		t.Fatalf("pair %v %v %v", dst, src, ok)
	}
	if _, _, ok := p.pair(); ok {
		t.Fatal("a /31 gave two pairs")
	}
	p, _ = newPool(netip.MustParsePrefix("10.0.0.9/32"))
	if _, _, ok := p.pair(); ok {
		t.Fatal("a /32 gave a pair")
	}
}
