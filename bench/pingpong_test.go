package bench

import (
	"context"
	"net"
	"testing"
	"time"
)

func TestPingPong(t *testing.T) {
	// Find a free UDP port on loopback.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Pong(ctx, addr) }()
	r, err := Ping(t.Context(), PingOptions{Addr: addr, Count: 50, Interval: 100 * time.Microsecond})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("pong: %v", err)
	}
	if r.Count+r.Lost != 50 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99 || r.Min > r.P50 {
		t.Fatalf("implausible result %+v", r)
	}
}

func TestParallel(t *testing.T) {
	seen := make([]int, 100)
	if err := parallel(t.Context(), 100, 7, func(i int) error { seen[i]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for i, n := range seen {
		if n != 1 {
			t.Fatalf("index %d called %d times", i, n)
		}
	}
	boom := net.UnknownNetworkError("boom")
	err := parallel(t.Context(), 1000, 3, func(i int) error {
		if i == 5 {
			return boom
		}
		return nil
	})
	if err != boom { //nolint:errorlint // parallel returns fn's error unwrapped
		t.Fatalf("err = %v", err)
	}
}
