package vwire

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// hint waits for a check-everything hint.
func hint(t *testing.T, ch <-chan forwarder.Death, what string) {
	t.Helper()
	select {
	case d := <-ch:
		if d.ID != "" {
			t.Fatalf("%s: hint for %q, want a check-everything one", what, d.ID)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("%s: no hint within 2s", what)
	}
}

// runWatch runs fn(ctx, ch) until the test ends.
func runWatch(t *testing.T, fn func(context.Context, chan<- forwarder.Death) error) chan forwarder.Death {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan forwarder.Death, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := fn(ctx, ch); !errors.Is(err, context.Canceled) {
			t.Errorf("watch ended with %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ch
}

// NetNSWatch hears a pin go from /run/netns and the exit of the process
// a /proc/PID URL names.
func TestNetNSWatchPinsAndProcesses(t *testing.T) {
	nstest.RequireRoot(t)
	var w NetNSWatch
	ch := runWatch(t, w.Run)
	name, _ := nstest.New(t)
	time.Sleep(100 * time.Millisecond) // watching
	for len(ch) > 0 {
		<-ch
	}
	nstest.Delete(t, name)
	hint(t, ch, "pin removed")

	holder := exec.Command("sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	w.Track("file:///proc/" + itoa(holder.Process.Pid) + "/ns/net")
	w.Track("inode://4/4026531840") // not a process: nothing to watch
	select {
	case d := <-ch:
		t.Fatalf("hint %v before anything died", d)
	case <-time.After(300 * time.Millisecond):
	}
	_ = holder.Process.Kill()
	_ = holder.Wait()
	hint(t, ch, "process exited")
}

func itoa(i int) string { return strconv.Itoa(i) }
