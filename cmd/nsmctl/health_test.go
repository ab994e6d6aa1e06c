package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestHealth(t *testing.T) {
	hs := health.NewServer()
	sock := filepath.Join(t.TempDir(), "h.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	t.Cleanup(func() { s.Stop(); <-done })
	addr := "--addr=unix://" + sock

	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if out, _, code := ctl(t, t.Context(), "health", addr); code != 0 || !strings.Contains(out, "SERVING") {
		t.Fatalf("serving: code %d, out %q", code, out)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if _, errOut, code := ctl(t, t.Context(), "health", addr); code != 1 || !strings.Contains(errOut, "NOT_SERVING") {
		t.Fatalf("not serving: code %d, stderr %q", code, errOut)
	}
	if _, _, code := ctl(t, t.Context(), "health", addr, "--service", "no.such.Service"); code != 1 {
		t.Fatalf("unknown service: code %d, want 1", code)
	}
}
