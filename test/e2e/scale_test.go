package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestScaleSIGKILLRestart: hundreds of live connections survive SIGKILL;
// the restarted forwarder adopts all of them (listed, refreshable, nothing
// duplicated) and Close leaves nothing. Logs how long adoption took.
func TestScaleSIGKILLRestart(t *testing.T) {
	const n = 300
	w := newWorld(t, "e2es")
	progsBefore := nstest.BPFProgIDs(t)
	linksBefore := w.links()
	w.startNSE("NSM_CIDR_PREFIX=169.254.0.0/16,fd00:5::/112")
	w.startForwarder()
	cc, client := w.dialForwarder()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	conns := make([]*networkservice.Connection, n)
	errs := make([]error, n)
	parallel := func(f func(i int) error) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = f(i)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	parallel(func(i int) (err error) {
		conns[i], err = nsc.Request(ctx, client, nsc.RequestOptions{
			NetworkService: "icmp-responder", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: fmt.Sprintf("nsm%d", i),
		})
		return err
	})
	linksUp := w.links()
	progsUp := sorted(nstest.BPFProgIDs(t))

	if err := w.fwd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.fwd.Wait()
	restart := time.Now()
	w.startForwarder()
	listed, err := nsc.List(ctx, networkservice.NewMonitorConnectionClient(cc), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restart with %d live connections: serving and listing them after %v", n, time.Since(restart))
	if len(listed) != n {
		t.Fatalf("restarted forwarder lists %d connections, want %d", len(listed), n)
	}
	for _, c := range []*networkservice.Connection{conns[0], conns[n/2], conns[n-1]} {
		if err := w.ping(w.client, epAddr(c)); err != nil {
			t.Fatal(err)
		}
	}
	parallel(func(i int) (err error) {
		conns[i], err = nsc.Refresh(ctx, client, conns[i], time.Minute)
		return err
	})
	if got := w.links(); !equalLinks(got, linksUp) {
		t.Fatal("links changed across restart and refresh")
	}
	if got := sorted(nstest.BPFProgIDs(t)); !slices.Equal(got, progsUp) {
		t.Fatalf("BPF programs changed across restart and refresh: %d -> %d", len(progsUp), len(got))
	}
	parallel(func(i int) error { return nsc.Close(ctx, client, conns[i]) })
	deadline := time.Now().Add(10 * time.Second)
	for (!equalLinks(w.links(), linksBefore) || !slices.Equal(sorted(nstest.BPFProgIDs(t)), sorted(progsBefore))) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !equalLinks(w.links(), linksBefore) {
		t.Fatal("links left after closing every connection")
	}
	if got := sorted(nstest.BPFProgIDs(t)); !slices.Equal(got, sorted(progsBefore)) {
		t.Fatalf("BPF programs left: %d, before %d", len(got), len(progsBefore))
	}
}
