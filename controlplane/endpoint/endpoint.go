// Package endpoint is a minimal NSM network service endpoint (NSE): it
// accepts KERNEL connections, names the endpoint-side interface and hands
// out point-to-point addresses the way NSM's point2pointipam does. It is the
// next hop of the forwarder in the demo and in the conformance tests; it
// builds no interfaces itself (the forwarder does).
package endpoint

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/google/uuid"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Defaults applied by New.
const (
	DefaultName             = "nse"
	DefaultIfNamePrefix     = "nse-"
	DefaultMaxTokenLifetime = 10 * time.Minute
)

// maxIfNameSuffix bounds the interface name suffix derived from the
// connection id: 8 hex digits make a collision between two live connections
// of one endpoint negligible.
const (
	maxIfNameSuffix = 8
	minIfNameSuffix = 4
)

// Options configure an Endpoint.
type Options struct {
	// Name is the endpoint's path segment name. Default DefaultName.
	Name string
	// NetworkService is the network service the endpoint accepts. Empty
	// (together with NetworkServices) accepts any.
	NetworkService string
	// NetworkServices are further accepted network services, for an
	// endpoint that provides several (NSM_SERVICE_NAMES).
	NetworkServices []string
	// CIDRs are the address pools: at most one IPv4 and one IPv6 prefix.
	// Every connection gets two addresses from each. Empty means the
	// endpoint assigns no addresses.
	CIDRs []netip.Prefix
	// NetNSURL names the endpoint's network namespace in the KERNEL
	// mechanism it returns. Default SelfNetNSURL().
	NetNSURL string
	// IfNamePrefix starts the endpoint-side interface name when the request
	// does not name it; a short hash of the connection id follows. At most
	// 11 characters. Default DefaultIfNamePrefix.
	IfNamePrefix string
	// MaxTokenLifetime is how long the endpoint's own path segment token is
	// valid. Default DefaultMaxTokenLifetime.
	MaxTokenLifetime time.Duration
	// MTU, when not zero, is set in the connection context if the request
	// leaves it zero.
	MTU uint32
	// VLANID, when set (1-4094), makes this a remote-VLAN endpoint, as NSM's
	// nse-remote-vlan: it stands for that VLAN of the physical network,
	// selects the forwarder's VLAN mechanism with this vlan-id and has no
	// interface or namespace of its own.
	VLANID uint16
	// Logger receives one line per Request, Close and expiry. Default: discard.
	Logger *slog.Logger
}

// Endpoint is an NSM network service endpoint. It is safe for concurrent use.
type Endpoint struct {
	name     string
	services []string
	netnsURL string
	// netnsPath is passed by descriptor (grpcfd) with each answer when
	// netnsURL is our own namespace's inode URL.
	netnsPath string
	prefix    string
	lifetime  time.Duration
	mtu       uint32
	vlan      uint16
	log       *slog.Logger

	mu       sync.Mutex
	pools    []*pool
	leases   map[string]*lease // by the endpoint's own path segment id
	shutdown bool
}

// lease is what one connection holds.
type lease struct {
	addrs []addrPair // one per pool, in pool order
	timer *time.Timer
	gen   uint64
}

type addrPair struct{ dst, src netip.Addr }

var _ networkservice.NetworkServiceServer = (*Endpoint)(nil)

// New returns an Endpoint configured by opts.
func New(opts Options) (*Endpoint, error) {
	e := &Endpoint{
		name:     opts.Name,
		netnsURL: opts.NetNSURL,
		prefix:   opts.IfNamePrefix,
		lifetime: opts.MaxTokenLifetime,
		mtu:      opts.MTU,
		vlan:     opts.VLANID,
		log:      opts.Logger,
		leases:   make(map[string]*lease),
	}
	if e.name == "" {
		e.name = DefaultName
	}
	if e.prefix == "" {
		e.prefix = DefaultIfNamePrefix
	}
	if len(e.prefix) > forwarder.MaxIfNameLen-minIfNameSuffix {
		return nil, fmt.Errorf("endpoint: interface name prefix %q is longer than %d characters", e.prefix, forwarder.MaxIfNameLen-minIfNameSuffix)
	}
	if err := forwarder.ValidateIfName(e.prefix + "0"); err != nil {
		return nil, fmt.Errorf("endpoint: interface name prefix: %w", err)
	}
	if e.lifetime <= 0 {
		e.lifetime = DefaultMaxTokenLifetime
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if opts.NetworkService != "" {
		e.services = append(e.services, opts.NetworkService)
	}
	e.services = append(e.services, opts.NetworkServices...)
	if e.vlan > 4094 {
		return nil, fmt.Errorf("endpoint: VLAN id %d is not 1-4094", e.vlan)
	}
	if e.netnsURL == "" && e.vlan == 0 {
		u, err := SelfNetNSURL()
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		e.netnsURL = u
		e.netnsPath = selfNetNS
	}
	if _, err := forwarder.ParseNetNSURL(e.netnsURL); err != nil && e.vlan == 0 {
		return nil, fmt.Errorf("endpoint: %w", err)
	}
	var have4, have6 bool
	for _, p := range opts.CIDRs {
		pl, err := newPool(p)
		if err != nil {
			return nil, fmt.Errorf("endpoint: CIDR: %w", err)
		}
		is4 := p.Addr().Unmap().Is4()
		if (is4 && have4) || (!is4 && have6) {
			return nil, fmt.Errorf("endpoint: CIDR %v: only one IPv4 and one IPv6 prefix are supported", p)
		}
		have4, have6 = have4 || is4, have6 || !is4
		e.pools = append(e.pools, pl)
	}
	return e, nil
}

const selfNetNS = "/proc/self/ns/net"

// SelfNetNSURL returns the inode://DEV/INO URL of the calling process's
// network namespace, in the format NSM's grpcfd uses.
func SelfNetNSURL() (string, error) {
	fi, err := os.Stat(selfNetNS)
	if err != nil {
		return "", fmt.Errorf("stat own network namespace: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("stat own network namespace: no device and inode: %w", forwarder.ErrNotSupported)
	}
	return fmt.Sprintf("inode://%d/%d", uint64(st.Dev), uint64(st.Ino)), nil
}

// Register registers the endpoint's NetworkService server on s.
func (e *Endpoint) Register(s *grpc.Server) {
	networkservice.RegisterNetworkServiceServer(s, e)
}

// Leases returns how many connections hold addresses or a pending expiry.
func (e *Endpoint) Leases() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.leases)
}

// Shutdown stops every expiry timer. Leases stay as they are; later
// Requests fail with Unavailable, Closes still release.
func (e *Endpoint) Shutdown() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.shutdown = true
	for _, l := range e.leases {
		if l.timer != nil {
			l.timer.Stop()
		}
	}
}

// Request accepts or refreshes a connection.
func (e *Endpoint) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	conn := req.GetConnection().Clone()
	if conn == nil {
		conn = &networkservice.Connection{}
	}
	if len(e.services) > 0 && !slices.Contains(e.services, conn.GetNetworkService()) {
		return nil, status.Errorf(codes.NotFound, "network service %q is not provided by endpoint %q", conn.GetNetworkService(), e.name)
	}
	prev, err := nsmpath.Update(conn, e.name, uuid.NewString())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "connection.path: %v", err)
	}
	id := conn.GetId()
	log := e.log.With("conn_id", id)

	mech, err := e.selectMechanism(conn, req.GetMechanismPreferences())
	if err != nil {
		return nil, grpcError(err)
	}
	conn.Mechanism = mech

	now := time.Now()
	expires := now.Add(e.lifetime)
	seg := conn.GetPath().GetPathSegments()[conn.GetPath().GetIndex()]
	seg.Token = newToken()
	seg.Expires = timestamppb.New(expires)

	// The connection expires with its caller's token: the caller that stops
	// refreshing is gone. Without a caller (or its expiry) our own token's
	// lifetime applies.
	callerExpires := expires
	if prev != conn.GetPath().GetIndex() {
		if ts := conn.GetPath().GetPathSegments()[prev].GetExpires(); ts != nil {
			callerExpires = ts.AsTime()
		}
	}

	if conn.GetContext() == nil {
		conn.Context = &networkservice.ConnectionContext{}
	}
	if conn.GetContext().GetMTU() == 0 && e.mtu != 0 {
		conn.Context.MTU = e.mtu
	}

	e.mu.Lock()
	if e.shutdown {
		e.mu.Unlock()
		return nil, status.Error(codes.Unavailable, "endpoint is shut down")
	}
	l, refresh, err := e.leaseLocked(id, conn.GetContext().GetIpContext())
	if err != nil {
		e.mu.Unlock()
		log.WarnContext(ctx, "request refused", "error", err)
		return nil, err
	}
	e.applyLocked(conn, l)
	e.armLocked(id, l, callerExpires.Sub(now))
	e.mu.Unlock()

	log.InfoContext(ctx, "request", "refresh", refresh, "network_service", conn.GetNetworkService(),
		"ifname", mech.GetParameters()[forwarder.ParamIfName],
		"src", conn.GetContext().GetIpContext().GetSrcIpAddrs(), "dst", conn.GetContext().GetIpContext().GetDstIpAddrs(),
		"expires", callerExpires)

	e.sendNetNS(ctx)
	nsmpath.Restore(conn, prev)
	return conn, nil
}

// sendNetNS passes our namespace by descriptor with the answer when the
// caller is connected over a unix socket with grpcfd (as NSM's endpoints
// do), so the forwarder needs no access to our /proc.
func (e *Endpoint) sendNetNS(ctx context.Context) {
	if e.netnsPath == "" {
		return
	}
	sender, ok := grpcfd.FromContext(ctx)
	if !ok {
		return
	}
	errc := sender.SendFilename(e.netnsPath)
	// grpcfd reports on errc once the descriptor went out with our answer
	// (or the connection closed); nothing to do with it but drain it.
	go func() {
		for range errc {
		}
	}()
}

// Close releases the connection's addresses. An unknown connection is not
// an error.
func (e *Endpoint) Close(ctx context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	id, ok := nsmpath.Find(conn, e.name)
	if !ok {
		return &emptypb.Empty{}, nil
	}
	e.mu.Lock()
	released := e.releaseLocked(id)
	e.mu.Unlock()
	e.log.InfoContext(ctx, "close", "conn_id", id, "known", released)
	return &emptypb.Empty{}, nil
}

// selectMechanism keeps a KERNEL mechanism the connection already has (a
// refresh) or takes the first KERNEL preference, and fills in the
// endpoint's namespace and interface name.
func (e *Endpoint) selectMechanism(conn *networkservice.Connection, prefs []*networkservice.Mechanism) (*networkservice.Mechanism, error) {
	if e.vlan != 0 {
		return e.selectVLAN(prefs)
	}
	var m *networkservice.Mechanism
	if cur := conn.GetMechanism(); cur.GetType() == forwarder.MechanismKernel {
		m = cur.Clone()
	} else {
		for _, p := range prefs {
			if p.GetType() == forwarder.MechanismKernel {
				m = p.Clone()
				break
			}
		}
	}
	if m == nil {
		types := make([]string, 0, len(prefs))
		for _, p := range prefs {
			types = append(types, p.GetType())
		}
		return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, "mechanism_preferences",
			"no %s mechanism among %q", forwarder.MechanismKernel, types)
	}
	m.Cls = forwarder.ClsLocal
	if m.Parameters == nil {
		m.Parameters = make(map[string]string)
	}
	m.Parameters[forwarder.ParamNetNSURL] = e.netnsURL
	if name := m.Parameters[forwarder.ParamIfName]; name == "" {
		m.Parameters[forwarder.ParamIfName] = e.ifName(conn.GetId())
	} else if err := forwarder.ValidateIfName(name); err != nil {
		return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: "mechanism.parameters." + forwarder.ParamIfName, Err: err}
	}
	return m, nil
}

// selectVLAN takes the forwarder's VLAN preference and gives it our VLAN id.
func (e *Endpoint) selectVLAN(prefs []*networkservice.Mechanism) (*networkservice.Mechanism, error) {
	types := make([]string, 0, len(prefs))
	for _, p := range prefs {
		if p.GetType() == forwarder.MechanismVLAN {
			m := p.Clone()
			m.Cls = forwarder.ClsRemote
			if m.Parameters == nil {
				m.Parameters = make(map[string]string)
			}
			m.Parameters[forwarder.ParamVLANID] = strconv.Itoa(int(e.vlan))
			return m, nil
		}
		types = append(types, p.GetType())
	}
	return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, "mechanism_preferences",
		"no %s mechanism among %q", forwarder.MechanismVLAN, types)
}

// ifName derives a stable interface name from the connection id.
func (e *Endpoint) ifName(id string) string {
	sum := sha256.Sum256([]byte(id))
	n := min(maxIfNameSuffix, forwarder.MaxIfNameLen-len(e.prefix))
	return e.prefix + hex.EncodeToString(sum[:])[:n]
}

// leaseLocked returns the lease of id, creating it when needed. A new lease
// takes back addresses the request already carries when they are free in
// our pools (the connection outlived an endpoint restart), else allocates.
func (e *Endpoint) leaseLocked(id string, ipc *networkservice.IPContext) (l *lease, refresh bool, err error) {
	if l, ok := e.leases[id]; ok {
		return l, true, nil
	}
	l = &lease{}
	for _, p := range e.pools {
		dst, dok := e.reclaimable(p, ipc.GetDstIpAddrs())
		src, sok := e.reclaimable(p, ipc.GetSrcIpAddrs())
		if dok && sok && dst != src {
			p.take(dst)
			p.take(src)
			l.addrs = append(l.addrs, addrPair{dst: dst, src: src})
			continue
		}
		dst, src, ok := p.pair()
		if !ok {
			e.freeLocked(l)
			return nil, false, status.Errorf(codes.ResourceExhausted, "address pool %v is exhausted", p.prefix)
		}
		l.addrs = append(l.addrs, addrPair{dst: dst, src: src})
	}
	e.leases[id] = l
	return l, false, nil
}

// reclaimable returns the first of addrs that is a free address of p.
func (e *Endpoint) reclaimable(p *pool, addrs []string) (netip.Addr, bool) {
	for _, s := range addrs {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		if a := pfx.Addr(); p.free(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// applyLocked writes the lease into the connection's IP context, replacing
// whatever the request carried from our pools and keeping the rest.
func (e *Endpoint) applyLocked(conn *networkservice.Connection, l *lease) {
	if len(e.pools) == 0 {
		return
	}
	ipc := conn.GetContext().GetIpContext()
	if ipc == nil {
		ipc = &networkservice.IPContext{}
		conn.Context.IpContext = ipc
	}
	ours := func(s string) bool {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return false
		}
		for _, p := range e.pools {
			if p.prefix.Contains(pfx.Addr()) {
				return true
			}
		}
		return false
	}
	ipc.SrcIpAddrs = slices.DeleteFunc(ipc.SrcIpAddrs, ours)
	ipc.DstIpAddrs = slices.DeleteFunc(ipc.DstIpAddrs, ours)
	notOurRoute := func(r *networkservice.Route) bool { return ours(r.GetPrefix()) }
	ipc.SrcRoutes = slices.DeleteFunc(ipc.SrcRoutes, notOurRoute)
	ipc.DstRoutes = slices.DeleteFunc(ipc.DstRoutes, notOurRoute)
	for _, a := range l.addrs {
		dst, src := hostPrefix(a.dst).String(), hostPrefix(a.src).String()
		ipc.DstIpAddrs = append(ipc.DstIpAddrs, dst)
		ipc.SrcIpAddrs = append(ipc.SrcIpAddrs, src)
		ipc.SrcRoutes = append(ipc.SrcRoutes, &networkservice.Route{Prefix: dst})
		ipc.DstRoutes = append(ipc.DstRoutes, &networkservice.Route{Prefix: src})
	}
}

// armLocked (re)starts the expiry timer of l.
func (e *Endpoint) armLocked(id string, l *lease, d time.Duration) {
	if l.timer != nil {
		l.timer.Stop()
	}
	l.gen++
	gen := l.gen
	l.timer = time.AfterFunc(max(d, 0), func() { e.expire(id, gen) })
}

func (e *Endpoint) expire(id string, gen uint64) {
	e.mu.Lock()
	l, ok := e.leases[id]
	if !ok || l.gen != gen || e.shutdown {
		e.mu.Unlock()
		return
	}
	e.releaseLocked(id)
	e.mu.Unlock()
	e.log.Info("connection expired", "conn_id", id)
}

func (e *Endpoint) releaseLocked(id string) bool {
	l, ok := e.leases[id]
	if !ok {
		return false
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	e.freeLocked(l)
	delete(e.leases, id)
	return true
}

func (e *Endpoint) freeLocked(l *lease) {
	for i, a := range l.addrs {
		e.pools[i].release(a.dst)
		e.pools[i].release(a.src)
	}
}

// newToken returns an opaque token. NSM signs a JWT here; nothing in nsmfwd
// verifies tokens, so a random string marks the segment as issued.
func newToken() string {
	return rand.Text()
}

// grpcError turns a *forwarder.Error into a status with the same code.
func grpcError(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	var fe *forwarder.Error
	if errors.As(err, &fe) {
		return status.Error(codes.Code(fe.Code), err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}
