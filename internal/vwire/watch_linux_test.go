package vwire

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A LinkWatch that names no namespace (its zero value, as a forwarder in
// the host's namespace builds it) watches the process's own: it must not
// take its zero NS for fd 0 and fail to subscribe over and over.
func TestLinkWatchZeroNSIsOwn(t *testing.T) {
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ch := make(chan forwarder.Death, 16)
	w := LinkWatch{Name: "zero-ns", Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := WatchLinkDeaths(ctx, w, ch); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("watch ended with %v", err)
	}
	if strings.Contains(logs.String(), "interrupted") {
		t.Fatalf("the watch could not subscribe:\n%s", logs.String())
	}
}
