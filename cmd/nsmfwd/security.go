package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
)

// errNoSecurity is returned when neither SPIFFE nor the insecure mode is
// configured: serving plaintext must be asked for.
var errNoSecurity = errors.New("config: SPIFFE_ENDPOINT_SOCKET is not set: point it at the SPIFFE Workload API " +
	"(e.g. unix:///run/spire/sockets/agent.sock) for mTLS and signed path tokens, " +
	"or set NSM_INSECURE=true to run without authentication (development and tests only)")

// newIdentity returns how nsmfwd authenticates: SPIFFE from the Workload
// API, or the insecure mode when NSM_INSECURE=true. The closer stops SVID
// rotation.
func newIdentity(ctx context.Context, cfg Config, log *slog.Logger) (identity.Identity, io.Closer, error) {
	switch {
	case cfg.Insecure:
		if cfg.SpiffeSocket != "" {
			log.WarnContext(ctx, "NSM_INSECURE=true: ignoring SPIFFE_ENDPOINT_SOCKET", "spiffe_endpoint_socket", cfg.SpiffeSocket)
		}
		log.WarnContext(ctx, "insecure mode: plaintext gRPC, unsigned tokens, callers identified by path segment name; for development and tests only")
		return identity.NewInsecure(cfg.Name, cfg.MaxTokenLifetime), nopCloser{}, nil
	case cfg.SpiffeSocket == "":
		return nil, nil, errNoSecurity
	}
	log.InfoContext(ctx, "waiting for an X.509 SVID from the SPIFFE Workload API", "spiffe_endpoint_socket", cfg.SpiffeSocket)
	wctx, cancel := context.WithTimeout(ctx, cfg.SpiffeTimeout)
	defer cancel()
	id, closer, err := identity.FromWorkloadAPI(wctx, cfg.SpiffeSocket, cfg.MaxTokenLifetime)
	if err != nil {
		return nil, nil, fmt.Errorf("spiffe (SPIFFE_ENDPOINT_SOCKET=%s, waited up to NSM_SPIFFE_TIMEOUT=%s): %w", cfg.SpiffeSocket, cfg.SpiffeTimeout, err)
	}
	log.InfoContext(ctx, "SPIFFE identity", "spiffe_id", id.Self())
	return id, closer, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
