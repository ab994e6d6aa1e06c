// Package controlplane serves NSM's NetworkService and MonitorConnection
// APIs on top of a forwarder.Dataplane: it keeps NSM's path-segment rules,
// asks the next hop (NSM_CONNECT_TO) for the endpoint side, builds the vWire
// with the dataplane, persists each connection so a restarted forwarder
// adopts its vWires, and closes connections whose caller stopped refreshing.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Defaults for the zero values of Options.
const (
	DefaultMaxTokenLifetime = 10 * time.Minute
	DefaultRequestTimeout   = 15 * time.Second
	DefaultRollbackTimeout  = 5 * time.Second
	DefaultHealthInterval   = 5 * time.Second
	// DefaultMonitorBuffer is how many events a Monitor subscriber may lag
	// behind before it is dropped.
	DefaultMonitorBuffer = 256
	DefaultFDWait        = 100 * time.Millisecond
)

// Options configure a Server.
type Options struct {
	// Name is our NSM name (NSM_NAME); it names our path segment. Required.
	Name string
	// Dataplane builds the vWires. Required.
	Dataplane forwarder.Dataplane
	// Registry validates mechanisms; nil means forwarder.DefaultRegistry().
	Registry *forwarder.Registry
	// NextHop is the client toward NSM_CONNECT_TO (usually the local NSMgr).
	// Required.
	NextHop networkservice.NetworkServiceClient
	// Store persists connection state across restarts; nil keeps state in
	// memory only, and Start then removes every vWire the dataplane owns.
	Store *forwarder.Store
	// MaxTokenLifetime bounds the expiry we put in our own path segment;
	// 0 means DefaultMaxTokenLifetime.
	MaxTokenLifetime time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Health, when set, is kept SERVING while Dataplane.Ready succeeds and
	// NOT_SERVING otherwise, checked at Start and every HealthInterval.
	// Register adds it to the gRPC server.
	Health *health.Server
	// HealthInterval is the period of the readiness check; 0 means
	// DefaultHealthInterval.
	HealthInterval time.Duration
	// RequestTimeout bounds one Request (next hop plus dataplane) when the
	// caller set no earlier deadline; 0 means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// RollbackTimeout bounds clean-up work (rollback, Close, expiry), which
	// runs without the caller's cancellation; 0 means DefaultRollbackTimeout.
	RollbackTimeout time.Duration
	// MonitorBuffer is the per-subscriber event buffer; 0 means
	// DefaultMonitorBuffer.
	MonitorBuffer int
	// Identity authenticates callers, signs our path segment tokens and
	// decides who sees which connection; nil means
	// identity.NewInsecure(Name, MaxTokenLifetime), for tests and
	// development. cmd/nsmfwd always sets it.
	Identity identity.Identity
	// FDWait bounds the wait for a file descriptor announced by an
	// inode:// URL on a unix socket peer (grpcfd); 0 means DefaultFDWait.
	// Descriptors travel with the message that names them, so the wait
	// only matters for a peer that names an inode without passing it.
	FDWait time.Duration
	// Metrics, when set, receives the server's Prometheus metrics: request
	// and close latency histograms, reaped connections, and collectors that
	// read live connection counts, readiness and per-connection datapath
	// counters at scrape time (docs/metrics.md).
	Metrics prometheus.Registerer
	// MechanismPriority orders mechanism types (NSM_MECHANISM_PRIORITY):
	// the listed ones first, in this order, then the others in the
	// caller's (or the dataplane's) order. It applies to the caller's
	// preferences and to what we offer the next hop.
	MechanismPriority []string
}

// Server implements networkservice.NetworkServiceServer and
// networkservice.MonitorConnectionServer.
type Server struct {
	name      string
	dp        forwarder.Dataplane
	reg       *forwarder.Registry
	next      networkservice.NetworkServiceClient
	store     *forwarder.Store
	maxTTL    time.Duration
	log       *slog.Logger
	health    *health.Server
	healthInt time.Duration
	reqTO     time.Duration
	rbTO      time.Duration
	monBuf    int
	metrics   *metrics
	id        identity.Identity
	fdWait    time.Duration
	priority  []string

	ready atomic.Int32 // last readiness seen: 0 unknown, 1 ready, 2 not ready
	locks keyedMutex

	// mu guards everything below. It is never held across I/O.
	mu      sync.Mutex
	started bool
	closed  bool
	conns   map[string]*entry
	subs    map[*subscriber]struct{}
	wg      sync.WaitGroup // expiry callbacks and background goroutines
	bgDone  chan struct{}  // closed by Shutdown
}

// entry is one connection of our table. Entries are immutable once in the
// table: a refresh replaces the entry, under the connection's lock.
type entry struct {
	// conn is the client-facing connection in our frame: Path.Index on our
	// segment, Id our segment id.
	conn *networkservice.Connection
	// next is the connection the next hop returned, used to Close it.
	next *networkservice.Connection
	// fc is what the dataplane was asked to build.
	fc *forwarder.Conn
	// owner is the identity of the caller that created the connection
	// (see identity.Identity.Authenticate); only it may refresh, close
	// or monitor the connection. Empty for records written before
	// identities were kept: the next refresh claims them.
	owner string
	timer *time.Timer
	log   *slog.Logger
}

var (
	_ networkservice.NetworkServiceServer    = (*Server)(nil)
	_ networkservice.MonitorConnectionServer = (*Server)(nil)
)

// ErrShutdown is returned by calls made after Shutdown.
var ErrShutdown = errors.New("controlplane: server is shut down")

// New returns a Server. Call Start before serving.
func New(opts Options) (*Server, error) {
	switch {
	case opts.Name == "":
		return nil, errors.New("controlplane: Options.Name is required")
	case opts.Dataplane == nil:
		return nil, errors.New("controlplane: Options.Dataplane is required")
	case opts.NextHop == nil:
		return nil, errors.New("controlplane: Options.NextHop is required")
	}
	s := &Server{
		name:      opts.Name,
		dp:        opts.Dataplane,
		reg:       opts.Registry,
		next:      opts.NextHop,
		store:     opts.Store,
		maxTTL:    orDefault(opts.MaxTokenLifetime, DefaultMaxTokenLifetime),
		log:       opts.Logger,
		health:    opts.Health,
		healthInt: orDefault(opts.HealthInterval, DefaultHealthInterval),
		reqTO:     orDefault(opts.RequestTimeout, DefaultRequestTimeout),
		rbTO:      orDefault(opts.RollbackTimeout, DefaultRollbackTimeout),
		monBuf:    opts.MonitorBuffer,
		id:        opts.Identity,
		fdWait:    orDefault(opts.FDWait, DefaultFDWait),
		priority:  opts.MechanismPriority,
		conns:     make(map[string]*entry),
		subs:      make(map[*subscriber]struct{}),
		bgDone:    make(chan struct{}),
	}
	if s.reg == nil {
		s.reg = forwarder.DefaultRegistry()
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.id == nil {
		s.id = identity.NewInsecure(s.name, s.maxTTL)
	}
	if s.monBuf <= 0 {
		s.monBuf = DefaultMonitorBuffer
	}
	s.log = s.log.With("forwarder", s.name, "dataplane", s.dp.Name())
	s.setHealth(false)
	if opts.Metrics != nil {
		m, err := newMetrics(s, opts.Metrics)
		if err != nil {
			return nil, fmt.Errorf("controlplane: register metrics: %w", err)
		}
		s.metrics = m
	}
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Register adds the NetworkService, MonitorConnection and (when configured)
// health services to gs.
func (s *Server) Register(gs *grpc.Server) {
	networkservice.RegisterNetworkServiceServer(gs, s)
	networkservice.RegisterMonitorConnectionServer(gs, s)
	if s.health != nil {
		healthgrpc.RegisterHealthServer(gs, s.health)
	}
}

// Start restores the persisted connections (see restore), reconciles the
// dataplane with them and starts the readiness checks. It must return
// before the server is served.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrShutdown
	case s.started:
		s.mu.Unlock()
		return errors.New("controlplane: Start called twice")
	}
	s.mu.Unlock()

	if err := s.restore(ctx); err != nil {
		return err
	}
	s.checkHealth(ctx)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrShutdown
	}
	s.started = true
	s.wg.Add(1)
	go s.healthLoop()
	if w, ok := s.dp.(forwarder.Watcher); ok {
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.wg.Add(2)
		go func() { defer s.wg.Done(); <-s.bgDone; cancel() }()
		go func() { defer s.wg.Done(); newReaper(s, w).run(rctx) }()
	}
	return nil
}

// Shutdown stops timers, Monitor streams and background work, and waits for
// them. vWires and state records stay in place for the next start.
func (s *Server) Shutdown() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.bgDone)
	for _, e := range s.conns {
		if e.timer != nil {
			e.timer.Stop()
		}
	}
	for sub := range s.subs {
		delete(s.subs, sub)
		sub.drop()
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.setHealth(false)
}

// Connections returns copies of the current connections in our frame,
// keyed by our segment id.
func (s *Server) Connections() map[string]*networkservice.Connection {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*networkservice.Connection, len(s.conns))
	for id, e := range s.conns {
		out[id] = e.conn.Clone()
	}
	return out
}

// checkRunning reports whether requests may be served.
func (s *Server) checkRunning() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "%w", ErrShutdown)
	case !s.started:
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "controlplane: server not started")
	}
	return nil
}

// keyedMutex serialises work per connection id without a global lock held
// across I/O. Waiting honours the context.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedLock
}

type keyedLock struct {
	ch   chan struct{} // holds one token while locked
	refs int
}

func (k *keyedMutex) lock(ctx context.Context, id string) (unlock func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[string]*keyedLock)
	}
	l := k.m[id]
	if l == nil {
		l = &keyedLock{ch: make(chan struct{}, 1)}
		k.m[id] = l
	}
	l.refs++
	k.mu.Unlock()

	release := func() {
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.m, id)
		}
		k.mu.Unlock()
	}
	select {
	case l.ch <- struct{}{}:
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("wait for connection %q: %w", id, ctx.Err())
	}
	return func() {
		<-l.ch
		release()
	}, nil
}
