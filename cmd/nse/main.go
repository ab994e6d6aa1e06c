// Command nse is a minimal NSM network service endpoint for nsmfwd's demo
// and tests. It serves networkservice.NetworkService on NSM_LISTEN_ON and
// answers KERNEL requests with its own namespace, an interface name and
// point-to-point addresses. Configuration comes from NSM_* variables; see
// nse --help.
package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/edwarnicke/grpcfd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nsmfwd/nsmfwd/controlplane/endpoint"
	"github.com/nsmfwd/nsmfwd/controlplane/identity"
)

func main() {
	os.Exit(mainErr(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func mainErr(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "help":
			usage(stdout)
			return 0
		default:
			fmt.Fprintf(stderr, "nse: unexpected argument %q (configuration is by environment; see --help)\n", a)
			return 2
		}
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		fmt.Fprintf(stderr, "nse: config: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg, log, nil); err != nil {
		log.Error("nse failed", "error", err)
		return 1
	}
	return 0
}

// run serves the endpoint until ctx is done. ready, if not nil, receives the
// listening address once the server accepts connections.
func run(ctx context.Context, cfg Config, log *slog.Logger, ready chan<- net.Addr) error {
	e, err := endpoint.New(endpoint.Options{
		Name:             cfg.Name,
		NetworkServices:  cfg.ServiceNames,
		CIDRs:            cfg.CIDRPrefix,
		NetNSURL:         cfg.NetNSURL,
		IfNamePrefix:     cfg.IfNamePrefix,
		MaxTokenLifetime: cfg.MaxTokenLifetime,
		MTU:              cfg.MTU,
		VLANID:           uint16(min(cfg.VLANID, 0xffff)),
		Logger:           log,
	})
	if err != nil {
		return err
	}
	defer e.Shutdown()

	l, cleanup, err := listen(cfg.ListenOn.Scheme, listenAddr(cfg))
	if err != nil {
		return err
	}
	defer cleanup()

	// grpcfd: a forwarder on a unix socket gets our namespace by
	// descriptor with each answer. With SPIFFE, mutual TLS.
	serverOpts := []grpc.ServerOption{grpc.Creds(grpcfd.TransportCredentials(insecure.NewCredentials()))}
	if cfg.SpiffeSocket != "" {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		id, closer, err := identity.FromWorkloadAPI(wctx, cfg.SpiffeSocket, cfg.MaxTokenLifetime)
		cancel()
		if err != nil {
			return err
		}
		defer closer.Close()
		serverOpts = id.ServerOptions()
		log.InfoContext(ctx, "serving mTLS", "spiffe_id", id.Self())
	}
	s := grpc.NewServer(serverOpts...)
	e.Register(s)
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	log.InfoContext(ctx, "nse serving", "listen_on", cfg.ListenOn.String(), "name", cfg.Name,
		"services", cfg.ServiceNames, "cidrs", cfg.CIDRPrefix)
	if ready != nil {
		ready <- l.Addr()
	}

	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", cfg.ListenOn, err)
	case <-ctx.Done():
	}
	log.InfoContext(ctx, "nse stopping")
	stopped := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		s.Stop()
		<-stopped
	}
	<-errc
	return nil
}

func listenAddr(cfg Config) string {
	if cfg.ListenOn.Scheme == "unix" {
		return cfg.ListenOn.Path
	}
	return cfg.ListenOn.Host
}

// listen opens the listener. A unix socket left by a process that is gone
// is removed first; one that still answers is an error. The returned
// cleanup removes the socket file.
func listen(network, addr string) (net.Listener, func(), error) {
	if network != "unix" {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
		}
		return l, func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o750); err != nil {
		return nil, nil, fmt.Errorf("listen unix %s: %w", addr, err)
	}
	if fi, err := os.Lstat(addr); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, nil, fmt.Errorf("listen unix %s: exists and is not a socket", addr)
		}
		if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
			_ = c.Close()
			return nil, nil, fmt.Errorf("listen unix %s: another process is serving on it", addr)
		}
		if err := os.Remove(addr); err != nil {
			return nil, nil, fmt.Errorf("remove stale socket %s: %w", addr, err)
		}
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen unix %s: %w", addr, err)
	}
	// Closing the listener usually unlinks the socket already; a failure
	// here leaves a stale socket that the next start removes.
	return l, func() { _ = os.Remove(addr) }, nil
}
