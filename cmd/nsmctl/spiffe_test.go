package main

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
)

// TestHealthSPIFFE is the DaemonSet's readiness probe against a forwarder
// serving mTLS: nsmctl gets its SVID from SPIFFE_ENDPOINT_SOCKET, as in the
// forwarder's container.
func TestHealthSPIFFE(t *testing.T) {
	dir := t.TempDir()
	wapi, err := identitytest.NewWorkloadAPI(dir, "nsmfwd.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wapi.Stop)
	src, err := wapi.CA.Source("spiffe://nsmfwd.test/forwarder")
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewSPIFFE(src, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	sock := filepath.Join(dir, "fwd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(id.ServerOptions()...)
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	spiffeSock, err := wapi.Socket("nsmctl", "spiffe://nsmfwd.test/forwarder")
	if err != nil {
		t.Fatal(err)
	}

	args := []string{"health", "--addr=unix://" + sock, "--timeout=3s"}
	var out, errb bytes.Buffer
	if code := run(t.Context(), args, &out, &errb, getenv(map[string]string{"SPIFFE_ENDPOINT_SOCKET": spiffeSock})); code != 0 || !strings.Contains(out.String(), "SERVING") {
		t.Fatalf("health with SPIFFE: code %d, out %q, err %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run(t.Context(), args, &out, &errb, getenv(nil)); code == 0 {
		t.Fatalf("health without SPIFFE against an mTLS forwarder succeeded: %q", out.String())
	}
}
