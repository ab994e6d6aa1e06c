// Command nsmfwd is a Network Service Mesh forwarder: it serves NSM's
// NetworkService and MonitorConnection APIs and builds vWires between client
// and endpoint namespaces. Run `nsmfwd --help` for its configuration.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/networkservicemesh/api/pkg/api/registry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/envconfig"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nsmfwd:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: nsmfwd [--help]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "nsmfwd is a Network Service Mesh forwarder. It is configured by environment variables:")
	fmt.Fprintln(w)
	envconfig.Usage(w, &Config{})
	fmt.Fprintln(w)
	fmt.Fprintln(w, "With NSM_DATAPLANE=vpp:")
	envconfig.Usage(w, &VPPConfig{})
	fmt.Fprintln(w)
	fmt.Fprintln(w, "With NSM_DATAPLANE=sriov or kernel+sriov:")
	envconfig.Usage(w, &SRIOVConfig{})
	fmt.Fprintln(w)
	fmt.Fprintln(w, "SIGTERM or SIGINT stops the forwarder gracefully; established vWires stay in place and are")
	fmt.Fprintln(w, "adopted by the next start (connection table in NSM_STATE_DIR).")
}

func run(args []string, stdout io.Writer) error {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "help":
			usage(stdout)
			return nil
		default:
			usage(os.Stderr)
			return fmt.Errorf("unknown argument %q", a)
		}
	}
	var cfg Config
	if err := envconfig.Load(&cfg, os.LookupEnv); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return serve(ctx, cfg, log)
}

func newLogger(cfg Config) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	switch cfg.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("config: NSM_LOG_FORMAT=%q: want text or json", cfg.LogFormat)
	}
}

func newDataplane(ctx context.Context, cfg Config, log *slog.Logger) (forwarder.Dataplane, error) {
	if cfg.VXLANPort == 0 || cfg.VXLANPort > 65535 {
		return nil, fmt.Errorf("config: NSM_VXLAN_PORT=%d: want 1-65535", cfg.VXLANPort)
	}
	switch cfg.Dataplane {
	case "kernel":
		tip, vlans, err := remoteOptions(ctx, cfg, log, true)
		if err != nil {
			return nil, err
		}
		return kernel.New(ctx, kernel.Options{
			Name:        cfg.Name,
			PinDir:      cfg.BPFPinDir,
			Attach:      cfg.TCAttach,
			TunnelIP:    tip,
			VXLANPort:   uint16(cfg.VXLANPort),
			VLANDevices: vlans,
			Logger:      log.With("dataplane", "kernel"),
		})
	case "vpp":
		return newVPPDataplane(ctx, cfg, log)
	case "sriov":
		return newSRIOVDataplane(ctx, cfg, log)
	case "kernel+sriov":
		return newCompositeDataplane(ctx, cfg, log)
	default:
		return nil, fmt.Errorf("config: NSM_DATAPLANE=%q: want kernel, vpp, sriov or kernel+sriov", cfg.Dataplane)
	}
}

func serve(ctx context.Context, cfg Config, log *slog.Logger) error {
	id, idCloser, err := newIdentity(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer idCloser.Close()
	store, err := forwarder.OpenStore(cfg.StateDir)
	if err != nil {
		return err
	}
	dp, err := newDataplane(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer dp.Close()

	next, err := controlplane.Dial(ctx, cfg.ConnectTo, cfg.DialTimeout, id.DialOptions()...)
	if err != nil {
		// The forwarder serves anyway: Requests get Unavailable until the
		// next hop (usually NSMgr, which may start later) is reachable.
		log.WarnContext(ctx, "next hop not reachable yet; serving anyway", "connect_to", cfg.ConnectTo, "error", err)
		if next, err = controlplane.NewClient(cfg.ConnectTo, id.DialOptions()...); err != nil {
			return fmt.Errorf("config: NSM_CONNECT_TO: %w", err)
		}
	}
	defer next.Close()
	// NSMgr is the registry proxy; the endpoint side goes to the endpoint
	// found there (or to NSM_CONNECT_TO itself when it has no registry).
	nextHop := controlplane.NewNextHop(registry.NewNetworkServiceEndpointRegistryClient(next), networkservice.NewNetworkServiceClient(next), id.DialOptions()...)
	defer nextHop.CloseConns()

	hs := health.NewServer()
	var reg *prometheus.Registry
	if cfg.Prometheus {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		if err := registerDataplaneMetrics(reg, dp); err != nil {
			return err
		}
	}
	srv, err := controlplane.New(controlplane.Options{
		Name:              cfg.Name,
		Dataplane:         dp,
		Registry:          mechanismRegistry(dp),
		NextHop:           nextHop,
		Store:             store,
		MaxTokenLifetime:  cfg.MaxTokenLifetime,
		RequestTimeout:    cfg.RequestTimeout,
		Logger:            log,
		Health:            hs,
		Metrics:           registerer(reg),
		Identity:          id,
		MechanismPriority: cfg.MechanismPrio,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer srv.Shutdown()

	lis, cleanup, err := listen(cfg.ListenOn)
	if err != nil {
		return err
	}
	defer cleanup()
	// mTLS (or plaintext when insecure), with grpcfd so unix socket
	// callers can pass namespace descriptors.
	gs := grpc.NewServer(id.ServerOptions()...)
	srv.Register(gs)

	errc := make(chan error, 2)
	go func() { errc <- gs.Serve(lis) }()
	if reg != nil {
		stopMetrics, err := serveMetrics(cfg.PrometheusListen, reg, errc)
		if err != nil {
			gs.Stop()
			return err
		}
		defer stopMetrics()
		log.InfoContext(ctx, "serving metrics", "listen_on", cfg.PrometheusListen)
	}
	log.InfoContext(ctx, "nsmfwd serving", "listen_on", cfg.ListenOn, "connect_to", cfg.ConnectTo,
		"dataplane", dp.Name(), "state_dir", cfg.StateDir, "identity", id.Self(), "insecure", id.Insecure())
	// Registered only once it serves, so NSMgr can reach it at once.
	registration := controlplane.Register(controlplane.RegistrationOptions{
		Client:         registry.NewNetworkServiceEndpointRegistryClient(next),
		Name:           cfg.Name,
		NetworkService: cfg.NSName,
		Labels:         cfg.Labels,
		URL:            cfg.ListenOn,
		Lifetime:       cfg.MaxTokenLifetime,
		Logger:         log,
		// As NSM's forwarders: our socket goes to NSMgr by descriptor
		// when both ends are unix sockets.
		SocketByFD: isUnix(cfg.ListenOn) && isUnix(cfg.ConnectTo),
	})

	select {
	case err := <-errc:
		registration.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.InfoContext(ctx, "shutting down; vWires stay in place")
	registration.Close()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	return nil
}

// listen opens the NSM_LISTEN_ON address; for a unix socket it creates the
// directory and replaces a stale socket file.
func listen(rawURL string) (net.Listener, func(), error) {
	network, addr, err := controlplane.ParseURL(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("config: NSM_LISTEN_ON: %w", err)
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
			return nil, nil, fmt.Errorf("listen %s: %w", rawURL, err)
		}
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("listen %s: %w", rawURL, err)
		}
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen %s: %w", rawURL, err)
	}
	cleanup := func() {
		_ = lis.Close()
		if network == "unix" {
			_ = os.Remove(addr)
		}
	}
	return lis, cleanup, nil
}

func isUnix(rawURL string) bool {
	network, _, err := controlplane.ParseURL(rawURL)
	return err == nil && network == "unix"
}

// registerer avoids a typed-nil interface when metrics are off.
func registerer(reg *prometheus.Registry) prometheus.Registerer {
	if reg == nil {
		return nil
	}
	return reg
}

// serveMetrics serves /metrics on addr; serve errors go to errc. The
// returned function stops the server.
func serveMetrics(addr string, reg *prometheus.Registry, errc chan<- error) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("metrics: %w", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	}, nil
}
