package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dp, nse := newFakeDP(), newFakeNSE()
		store := openStore(t)
		s, err := New(Options{
			Name: fwdName, Dataplane: dp, NextHop: direct{nse}, Store: store,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer s.Shutdown()

		conn, err := s.Request(t.Context(), newRequest("nsc-1", time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		id := conn.GetPath().GetPathSegments()[1].GetId()

		time.Sleep(59 * time.Second)
		synctest.Wait()
		if len(dp.Calls("disconnect")) != 0 {
			t.Fatal("closed before expiry")
		}
		// A refresh re-arms the timer: 59s + 1m.
		if _, err := s.Request(t.Context(), refreshOf(conn, time.Minute)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Second) // past the first expiry
		synctest.Wait()
		if len(dp.Calls("disconnect")) != 0 || len(s.Connections()) != 1 {
			t.Fatal("refreshed connection closed at its old expiry")
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := dp.Calls("disconnect"); !slices.Equal(got, []string{"disconnect " + id}) {
			t.Errorf("disconnect calls %q after expiry", got)
		}
		if got := nse.Calls("close"); !slices.Equal(got, []string{"close " + id}) {
			t.Errorf("next hop close calls %q after expiry", got)
		}
		if len(s.Connections()) != 0 {
			t.Error("connection still in the table")
		}
		if recs, _ := store.Load(); len(recs) != 0 {
			t.Error("record left")
		}
	})
}

func TestExpiryManyConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dp, nse := newFakeDP(), newFakeNSE()
		s, err := New(Options{Name: fwdName, Dataplane: dp, NextHop: direct{nse}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer s.Shutdown()
		for i := range 300 {
			ttl := time.Duration(i+1) * time.Second
			if _, err := s.Request(t.Context(), newRequest(fmt.Sprintf("nsc-%d", i), ttl)); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(150*time.Second + time.Millisecond)
		synctest.Wait()
		if n := len(s.Connections()); n != 150 {
			t.Errorf("%d connections after 150s, want 150", n)
		}
		time.Sleep(151 * time.Second)
		synctest.Wait()
		if n := len(s.Connections()); n != 0 {
			t.Errorf("%d connections after 301s, want 0", n)
		}
	})
}

func TestShutdownLeavesVWires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dp, nse := newFakeDP(), newFakeNSE()
		s, err := New(Options{Name: fwdName, Dataplane: dp, NextHop: direct{nse}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Request(t.Context(), newRequest("nsc-1", time.Minute)); err != nil {
			t.Fatal(err)
		}
		s.Shutdown()
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := dp.Calls("disconnect"); len(got) != 0 {
			t.Errorf("disconnect after shutdown: %q", got)
		}
		if _, err := s.Request(t.Context(), newRequest("nsc-2", time.Minute)); codeOf(err) == 0 {
			t.Error("request after shutdown succeeded")
		}
	})
}

func openStore(t *testing.T) *forwarder.Store {
	t.Helper()
	st, err := forwarder.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// blockedStream is a Monitor stream whose Send blocks until released.
type blockedStream struct {
	networkservice.MonitorConnection_MonitorConnectionsServer
	ctx     context.Context
	sent    chan struct{}
	release chan struct{}
}

func (b *blockedStream) Context() context.Context     { return b.ctx }
func (b *blockedStream) SetHeader(metadata.MD) error  { return nil }
func (b *blockedStream) SendHeader(metadata.MD) error { return nil }
func (b *blockedStream) SetTrailer(metadata.MD)       {}

func (b *blockedStream) Send(*networkservice.ConnectionEvent) error {
	select {
	case b.sent <- struct{}{}:
	default:
	}
	select {
	case <-b.release:
	case <-b.ctx.Done():
	}
	return nil
}

func healthStatus(t *testing.T, e *env) string {
	t.Helper()
	res, err := e.health.Check(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return res.GetStatus().String()
}
