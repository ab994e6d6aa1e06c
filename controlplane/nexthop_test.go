package controlplane

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// nseRecorder is an endpoint that records what reaches it.
type nseRecorder struct {
	name   string
	mu     sync.Mutex
	reqs   []string // endpoint names seen in requests
	closes int
}

func (n *nseRecorder) Request(_ context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.reqs = append(n.reqs, req.GetConnection().GetNetworkServiceEndpointName())
	return req.GetConnection(), nil
}

func (n *nseRecorder) Close(context.Context, *networkservice.Connection) (*emptypb.Empty, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closes++
	return &emptypb.Empty{}, nil
}

func (n *nseRecorder) counts() (int, int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.reqs), n.closes
}

// staticRegistry answers Find from a fixed list, filtering by name and
// service like NSM's registry.
type staticRegistry struct {
	registry.UnimplementedNetworkServiceEndpointRegistryServer
	entries []*registry.NetworkServiceEndpointResponse
}

func (r *staticRegistry) Find(q *registry.NetworkServiceEndpointQuery, s registry.NetworkServiceEndpointRegistry_FindServer) error {
	want := q.GetNetworkServiceEndpoint()
	for _, e := range r.entries {
		nse := e.GetNetworkServiceEndpoint()
		if want.GetName() != "" && want.GetName() != nse.GetName() {
			continue
		}
		if len(want.GetNetworkServiceNames()) > 0 && (len(nse.GetNetworkServiceNames()) == 0 || nse.GetNetworkServiceNames()[0] != want.GetNetworkServiceNames()[0]) {
			continue
		}
		if err := s.Send(e); err != nil {
			return err
		}
	}
	return nil
}

func serveGRPC(t *testing.T, register func(*grpc.Server)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return "unix://" + sock
}

func nseEntry(name, service, url string, expires time.Time, deleted bool) *registry.NetworkServiceEndpointResponse {
	return &registry.NetworkServiceEndpointResponse{Deleted: deleted, NetworkServiceEndpoint: &registry.NetworkServiceEndpoint{
		Name: name, NetworkServiceNames: []string{service}, Url: url, ExpirationTime: timestamppb.New(expires),
	}}
}

func TestNextHopDiscoversEndpoints(t *testing.T) {
	a, b := &nseRecorder{name: "nse-a"}, &nseRecorder{name: "nse-b"}
	urlA := serveGRPC(t, func(s *grpc.Server) { networkservice.RegisterNetworkServiceServer(s, a) })
	urlB := serveGRPC(t, func(s *grpc.Server) { networkservice.RegisterNetworkServiceServer(s, b) })
	later, past := time.Now().Add(time.Hour), time.Now().Add(-time.Hour)
	reg := &staticRegistry{entries: []*registry.NetworkServiceEndpointResponse{
		nseEntry("nse-a", "svc", urlA, later, false),
		nseEntry("nse-b", "svc", urlB, later, false),
		nseEntry("nse-old", "svc", urlA, past, false),  // expired: skipped
		nseEntry("nse-gone", "svc", urlB, later, true), // deleted: skipped
	}}
	regURL := serveGRPC(t, func(s *grpc.Server) { registry.RegisterNetworkServiceEndpointRegistryServer(s, reg) })
	regCC, err := NewClient(regURL)
	if err != nil {
		t.Fatal(err)
	}
	defer regCC.Close()
	nh := NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(regCC), nil)
	defer nh.CloseConns()
	ctx := t.Context()

	// New connections spread round robin over the live endpoints, and
	// each learns its endpoint's name.
	var names []string
	for range 4 {
		conn, err := nh.Request(ctx, &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{NetworkService: "svc"}})
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, conn.GetNetworkServiceEndpointName())
	}
	if ra, _ := a.counts(); ra != 2 {
		t.Fatalf("nse-a got %d of 4 requests (%v)", ra, names)
	}
	if rb, _ := b.counts(); rb != 2 {
		t.Fatalf("nse-b got %d of 4 requests (%v)", rb, names)
	}
	// A refresh and a Close go to the endpoint the connection names.
	named := &networkservice.Connection{NetworkService: "svc", NetworkServiceEndpointName: "nse-b"}
	for range 3 {
		if _, err := nh.Request(ctx, &networkservice.NetworkServiceRequest{Connection: named}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nh.Close(ctx, named); err != nil {
		t.Fatal(err)
	}
	if rb, cb := b.counts(); rb != 5 || cb != 1 {
		t.Fatalf("nse-b: %d requests, %d closes; want 5 and 1", rb, cb)
	}
	// Unknown endpoint or service: NotFound naming it.
	for _, c := range []*networkservice.Connection{
		{NetworkService: "svc", NetworkServiceEndpointName: "nse-old"},
		{NetworkService: "other"},
	} {
		if _, err := nh.Request(ctx, &networkservice.NetworkServiceRequest{Connection: c}); status.Code(err) != codes.NotFound {
			t.Fatalf("%v: got %v, want NotFound", c, err)
		}
	}
}

// A next hop without registry (an endpoint used directly) is the next hop.
func TestNextHopDirectWithoutRegistry(t *testing.T) {
	direct := &nseRecorder{name: "direct"}
	url := serveGRPC(t, func(s *grpc.Server) { networkservice.RegisterNetworkServiceServer(s, direct) })
	cc, err := NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	nh := NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(cc), networkservice.NewNetworkServiceClient(cc))
	defer nh.CloseConns()
	for range 2 {
		if _, err := nh.Request(t.Context(), &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{NetworkService: "svc"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nh.Close(t.Context(), &networkservice.Connection{}); err != nil {
		t.Fatal(err)
	}
	if r, c := direct.counts(); r != 2 || c != 1 {
		t.Fatalf("direct next hop: %d requests, %d closes; want 2 and 1", r, c)
	}
}

// A registry that is down is an error (Unavailable), not a reason to send
// the endpoint side anywhere else.
func TestNextHopRegistryDown(t *testing.T) {
	cc, err := NewClient("unix://" + filepath.Join(t.TempDir(), "nothing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	direct := &nseRecorder{}
	nh := NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(cc), nil)
	_, err = nh.Request(t.Context(), &networkservice.NetworkServiceRequest{Connection: &networkservice.Connection{NetworkService: "svc"}})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	if r, _ := direct.counts(); r != 0 {
		t.Fatal("fell back although the registry is only down")
	}
}
