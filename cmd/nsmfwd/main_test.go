package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var b bytes.Buffer
	if err := run([]string{"--help"}, &b); err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !strings.Contains(b.String(), f.Tag.Get("env")) || f.Tag.Get("desc") == "" {
			t.Errorf("--help lacks %s or its description:\n%s", f.Tag.Get("env"), b.String())
		}
	}
}

func TestUnknownArgument(t *testing.T) {
	if err := run([]string{"--bogus"}, &bytes.Buffer{}); err == nil {
		t.Fatal("unknown argument accepted")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := t.TempDir() + "/sub/fwd.sock"
	lis, cleanup, err := listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	_ = lis.Close() // leaves the socket file, as a crash would
	cleanup()
	lis, cleanup, err = listen("unix://" + path)
	if err != nil {
		t.Fatalf("second listen on a stale socket: %v", err)
	}
	_ = lis.Close()
	cleanup()
}

func TestSecurityRequired(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if _, _, err := newIdentity(t.Context(), Config{Name: "f"}, log); !errors.Is(err, errNoSecurity) {
		t.Fatalf("neither SPIFFE nor insecure: %v, want errNoSecurity", err)
	}
	id, closer, err := newIdentity(t.Context(), Config{Name: "f", Insecure: true}, log)
	if err != nil || !id.Insecure() {
		t.Fatalf("NSM_INSECURE=true: %v, %v", id, err)
	}
	_ = closer.Close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := newIdentity(ctx, Config{Name: "f", SpiffeSocket: "unix:///nonexistent/agent.sock", SpiffeTimeout: time.Second}, log); err == nil {
		t.Fatal("unreachable Workload API accepted")
	}
}

func TestSecuritySPIFFE(t *testing.T) {
	wapi, err := identitytest.NewWorkloadAPI(t.TempDir(), "nsmfwd.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wapi.Stop)
	sock, err := wapi.Socket("fwd", "spiffe://nsmfwd.test/fwd")
	if err != nil {
		t.Fatal(err)
	}
	id, closer, err := newIdentity(t.Context(), Config{Name: "f", SpiffeSocket: sock, SpiffeTimeout: 10 * time.Second, MaxTokenLifetime: time.Minute}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if id.Insecure() || id.Self() != "spiffe://nsmfwd.test/fwd" {
		t.Fatalf("identity %q (insecure %v), want spiffe://nsmfwd.test/fwd over mTLS", id.Self(), id.Insecure())
	}
}
