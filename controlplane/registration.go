package controlplane

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults of RegistrationOptions.
const (
	DefaultForwarderService     = "forwarder"
	DefaultRegistrationLifetime = 10 * time.Minute
	registrationRetryMin        = 500 * time.Millisecond
	registrationRetryMax        = 30 * time.Second
	unregisterTimeout           = 5 * time.Second
)

// RegistrationOptions configure Register.
type RegistrationOptions struct {
	// Client is the registry client; NSM forwarders register through their
	// NSMgr (NSM_CONNECT_TO), which proxies the registry. Required.
	Client registry.NetworkServiceEndpointRegistryClient
	// Name is the forwarder's NSM name (NSM_NAME). Required.
	Name string
	// NetworkService is the service forwarders register for (NSM_NSNAME);
	// NSMgr finds forwarders by it. Default DefaultForwarderService.
	NetworkService string
	// Labels are the forwarder's labels (NSM_LABELS, e.g. p2p: "true"),
	// which NSMgr matches when it picks a forwarder.
	Labels map[string]string
	// URL is where NSMgr reaches the forwarder (NSM_LISTEN_ON). Required.
	URL string
	// Lifetime is the expiration asked for; the registration is refreshed
	// when a third of what the registry granted remains. Default
	// DefaultRegistrationLifetime.
	Lifetime time.Duration
	// Logger receives registration state changes; nil discards them.
	Logger *slog.Logger
	// SocketByFD announces URL's unix socket by descriptor (grpcfd), as
	// NSM's forwarders do: the URL registered is inode://DEV/INO and NSMgr
	// dials the socket through the descriptor, so it need not see our
	// socket directory. Set it only when Client talks to NSMgr over a
	// unix socket with grpcfd's transport credentials.
	SocketByFD bool
}

// Registration keeps the forwarder registered until Close.
type Registration struct {
	opts   RegistrationOptions
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	registered *registry.NetworkServiceEndpoint // last accepted registration
}

// Register starts registering the forwarder in the background: it
// registers, refreshes before the registration expires and retries with
// backoff while the registry is unreachable (the forwarder may start before
// its NSMgr). A next hop that serves no registry (an endpoint used directly,
// as in the demo) answers Unimplemented: registration stops there.
func Register(opts RegistrationOptions) *Registration {
	if opts.NetworkService == "" {
		opts.NetworkService = DefaultForwarderService
	}
	if opts.Lifetime <= 0 {
		opts.Lifetime = DefaultRegistrationLifetime
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registration{opts: opts, log: log.With("registry_name", opts.Name), cancel: cancel, done: make(chan struct{})}
	go r.loop(ctx)
	return r
}

func (r *Registration) nse() *registry.NetworkServiceEndpoint {
	return &registry.NetworkServiceEndpoint{
		Name:                r.opts.Name,
		NetworkServiceNames: []string{r.opts.NetworkService},
		NetworkServiceLabels: map[string]*registry.NetworkServiceLabels{
			r.opts.NetworkService: {Labels: maps.Clone(r.opts.Labels)},
		},
		Url:            r.opts.URL,
		ExpirationTime: timestamppb.New(time.Now().Add(r.opts.Lifetime)),
	}
}

func (r *Registration) loop(ctx context.Context) {
	defer close(r.done)
	retry := registrationRetryMin
	failing := false
	for {
		callCtx, cancel := context.WithTimeout(ctx, registrationRetryMax)
		nse, opts := r.nse(), r.socketByFD(callCtx)
		if len(opts) > 0 {
			nse.Url = opts[0].url
		}
		var callOpts []grpc.CallOption
		for _, o := range opts {
			callOpts = append(callOpts, o.opt)
		}
		got, err := r.opts.Client.Register(withRegistryPath(callCtx), nse, callOpts...)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		switch {
		case status.Code(err) == codes.Unimplemented:
			r.log.InfoContext(ctx, "next hop serves no registry; not registering", "error", err)
			return
		case err != nil:
			if !failing {
				r.log.WarnContext(ctx, "registration failed; retrying", "error", err)
				failing = true
			}
			wait = retry
			retry = min(retry*2, registrationRetryMax)
		default:
			if failing || r.current() == nil {
				r.log.InfoContext(ctx, "registered", "network_service", r.opts.NetworkService, "url", nse.GetUrl(),
					"expires", got.GetExpirationTime().AsTime())
			}
			failing, retry = false, registrationRetryMin
			r.mu.Lock()
			r.registered = got
			r.mu.Unlock()
			wait = r.opts.Lifetime / 3
			if exp := got.GetExpirationTime(); exp != nil {
				wait = time.Until(exp.AsTime()) / 3
			}
			wait = max(wait, registrationRetryMin)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

type fdOption struct {
	url string
	opt grpc.CallOption
}

// socketByFD returns the inode:// URL of our socket and the call option
// that passes its descriptor, when SocketByFD is set; nothing otherwise or
// when the socket cannot be stat'ed (the path URL is registered then).
func (r *Registration) socketByFD(ctx context.Context) []fdOption {
	if !r.opts.SocketByFD {
		return nil
	}
	network, path, err := ParseURL(r.opts.URL)
	if err != nil || network != "unix" {
		return nil
	}
	u, err := grpcfd.FilenameToURL(path)
	if err != nil {
		r.log.DebugContext(ctx, "socket not announced by descriptor", "error", err)
		return nil
	}
	creds := grpcfd.PerRPCCredentials(nil)
	sender, ok := grpcfd.FromPerRPCCredentials(creds)
	if !ok {
		return nil
	}
	errc := sender.SendFilename(path)
	go func() {
		for range errc { // reported once sent with the call, or the connection closed
		}
	}()
	return []fdOption{{url: u.String(), opt: grpc.PerRPCCredentials(creds)}}
}

func (r *Registration) current() *registry.NetworkServiceEndpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

// Close stops refreshing and unregisters, so NSMgr stops selecting this
// forwarder; established vWires are not touched.
func (r *Registration) Close() {
	r.cancel()
	<-r.done
	reg := r.current()
	if reg == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), unregisterTimeout)
	defer cancel()
	if _, err := r.opts.Client.Unregister(withRegistryPath(ctx), reg); err != nil {
		r.log.WarnContext(ctx, "unregister", "error", err)
		return
	}
	r.log.InfoContext(ctx, "unregistered")
}

// registryPathKey and emptyRegistryPath are how NSM's sdk v1.18.0 carries a
// registry call's path: JSON in the "path" metadata entry (registry
// grpcmetadata). A caller that starts the path sends it empty; NSMgr adds
// the caller's segment with the token of the call's metadata and its own,
// then checks them with NSM's registry policies. Without the entry NSMgr
// checks an empty path, which its policies refuse.
const (
	registryPathKey   = "path"
	emptyRegistryPath = `{"Index":0,"PathSegments":[]}`
)

// withRegistryPath adds the empty registry path to ctx's outgoing metadata.
func withRegistryPath(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, registryPathKey, emptyRegistryPath)
}
