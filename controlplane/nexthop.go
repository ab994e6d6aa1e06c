package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// NextHop is the forwarder's client for the endpoint side, as NSM's own
// forwarders do it. NSMgr (NSM_CONNECT_TO) is only the registry proxy: a
// Request sent back to NSMgr would make it select a forwarder again. So the
// endpoint is looked up in the registry (by the connection's endpoint name
// on a refresh or Close, else by its network service, round robin among the
// live endpoints) and its own URL is dialled; NSMgr's registry gives local
// endpoints' own URLs and remote ones' NSMgr URLs.
//
// When NSM_CONNECT_TO serves no registry (Unimplemented: an endpoint used
// directly, as in the demo and the tests), it is the next hop itself.
type NextHop struct {
	nses     registry.NetworkServiceEndpointRegistryClient
	direct   networkservice.NetworkServiceClient
	dialOpts []grpc.DialOption

	noRegistry atomic.Bool
	rr         atomic.Uint64

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	// files are endpoint sockets NSMgr passed by descriptor (grpcfd), by
	// the inode:// URL it gave for them; their conns dial
	// unix:///proc/PID/fd/N, so they stay open with the conns.
	files map[string]*os.File
}

var _ networkservice.NetworkServiceClient = (*NextHop)(nil)

// findTimeout bounds one registry lookup.
const findTimeout = 5 * time.Second

// NewNextHop returns a NextHop that finds endpoints through nses and falls
// back to direct when nses has no registry. dialOpts are used to dial
// endpoints.
func NewNextHop(nses registry.NetworkServiceEndpointRegistryClient, direct networkservice.NetworkServiceClient, dialOpts ...grpc.DialOption) *NextHop {
	return &NextHop{nses: nses, direct: direct, dialOpts: dialOpts, conns: map[string]*grpc.ClientConn{}, files: map[string]*os.File{}}
}

// Request sends req to the connection's endpoint, naming it in the
// connection as NSM's round robin does.
func (n *NextHop) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	c, name, err := n.client(ctx, req.GetConnection())
	if err != nil {
		return nil, err
	}
	if name != "" {
		req = &networkservice.NetworkServiceRequest{Connection: req.GetConnection().Clone(), MechanismPreferences: req.GetMechanismPreferences()}
		req.Connection.NetworkServiceEndpointName = name
	}
	conn, err := c.Request(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	if conn.GetNetworkServiceEndpointName() == "" {
		conn.NetworkServiceEndpointName = name
	}
	return conn, nil
}

// Close closes conn at the endpoint it names.
func (n *NextHop) Close(ctx context.Context, conn *networkservice.Connection, opts ...grpc.CallOption) (*emptypb.Empty, error) {
	c, _, err := n.client(ctx, conn)
	if err != nil {
		return nil, err
	}
	return c.Close(ctx, conn, opts...)
}

// client returns where conn's request goes and the endpoint's name ("" in
// direct mode).
func (n *NextHop) client(ctx context.Context, conn *networkservice.Connection) (networkservice.NetworkServiceClient, string, error) {
	if n.noRegistry.Load() {
		return n.direct, "", nil
	}
	nse, err := n.find(ctx, conn)
	switch {
	case status.Code(err) == codes.Unimplemented:
		n.noRegistry.Store(true)
		return n.direct, "", nil
	case err != nil:
		return nil, "", err
	}
	cc, err := n.dial(nse.GetUrl())
	if err != nil {
		return nil, "", status.Errorf(codes.Unavailable, "next hop: endpoint %s at %s: %v", nse.GetName(), nse.GetUrl(), err)
	}
	return networkservice.NewNetworkServiceClient(cc), nse.GetName(), nil
}

// find looks the endpoint up: by name when the connection names one, else
// among the live endpoints of its network service, round robin.
func (n *NextHop) find(ctx context.Context, conn *networkservice.Connection) (*registry.NetworkServiceEndpoint, error) {
	q := &registry.NetworkServiceEndpoint{Name: conn.GetNetworkServiceEndpointName()}
	if q.GetName() == "" {
		q.NetworkServiceNames = []string{conn.GetNetworkService()}
	}
	ctx, cancel := context.WithTimeout(ctx, findTimeout)
	defer cancel()
	// NSMgr over a unix socket passes endpoints' sockets by descriptor
	// and names them inode://DEV/INO: the endpoint's socket need not be
	// visible in our mount namespace (another pod's directory).
	fdCreds := grpcfd.PerRPCCredentials(nil)
	stream, err := n.nses.Find(withRegistryPath(ctx), &registry.NetworkServiceEndpointQuery{NetworkServiceEndpoint: q}, grpc.PerRPCCredentials(fdCreds))
	if err != nil {
		return nil, err
	}
	recv, _ := grpcfd.FromPerRPCCredentials(fdCreds)
	var live []*registry.NetworkServiceEndpoint
	now := time.Now()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		nse := resp.GetNetworkServiceEndpoint()
		switch {
		case resp.GetDeleted(), nse.GetUrl() == "",
			q.GetName() != "" && nse.GetName() != q.GetName(),
			nse.GetExpirationTime() != nil && nse.GetExpirationTime().AsTime().Before(now):
			continue
		}
		n.receiveSocket(ctx, recv, nse.GetUrl())
		live = append(live, nse)
	}
	if len(live) == 0 {
		if q.GetName() != "" {
			return nil, status.Errorf(codes.NotFound, "next hop: network service endpoint %q is not registered", q.GetName())
		}
		return nil, status.Errorf(codes.NotFound, "next hop: no endpoint registered for network service %q", conn.GetNetworkService())
	}
	return live[int(n.rr.Add(1)-1)%len(live)], nil
}

// receiveSocket takes the descriptor NSMgr passed for an inode:// endpoint
// URL, once per URL. It travels with the Find answer that names it, so it
// is there at once when it was sent at all.
func (n *NextHop) receiveSocket(ctx context.Context, recv grpcfd.FDRecver, rawURL string) {
	if recv == nil || !strings.HasPrefix(rawURL, "inode://") {
		return
	}
	n.mu.Lock()
	_, have := n.files[rawURL]
	n.mu.Unlock()
	if have {
		return
	}
	ch, err := recv.RecvFileByURL(rawURL)
	if err != nil {
		return
	}
	t := time.NewTimer(DefaultFDWait)
	defer t.Stop()
	select {
	case f, ok := <-ch:
		if !ok || f == nil {
			return
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		if _, have := n.files[rawURL]; have {
			_ = f.Close()
			return
		}
		n.files[rawURL] = f
	case <-t.C:
	case <-ctx.Done():
	}
}

func (n *NextHop) dial(url string) (*grpc.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cc, ok := n.conns[url]; ok {
		return cc, nil
	}
	target := url
	if strings.HasPrefix(url, "inode://") {
		f, ok := n.files[url]
		if !ok {
			return nil, fmt.Errorf("dial %s: the registry named the endpoint's socket by inode but passed no descriptor for it", url)
		}
		target = "unix://" + f.Name()
	}
	cc, err := NewClient(target, n.dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	n.conns[url] = cc
	return cc, nil
}

// CloseConns closes the connections to the endpoints dialled so far.
func (n *NextHop) CloseConns() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for url, cc := range n.conns {
		_ = cc.Close()
		delete(n.conns, url)
	}
	for url, f := range n.files {
		_ = f.Close()
		delete(n.files, url)
	}
}
