package vwire

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// A LinkWatch that names no namespace (its zero value, as a forwarder in
// the host's namespace builds it) watches the process's own: it must not
// take its zero NS for fd 0 and fail to subscribe over and over.
func TestLinkWatchZeroNSIsOwn(t *testing.T) {
	var logs bytes.Buffer // written by the watch, which runs in this goroutine
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
