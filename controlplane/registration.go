package controlplane

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/networkservicemesh/api/pkg/api/registry"
	"google.golang.org/grpc/codes"
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
		got, err := r.opts.Client.Register(callCtx, r.nse())
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
				r.log.InfoContext(ctx, "registered", "network_service", r.opts.NetworkService, "url", r.opts.URL,
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
	if _, err := r.opts.Client.Unregister(ctx, reg); err != nil {
		r.log.WarnContext(ctx, "unregister", "error", err)
		return
	}
	r.log.InfoContext(ctx, "unregistered")
}
