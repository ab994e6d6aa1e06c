package conformance

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// reapDeadline is how soon after a death the vWire must be gone (issue:
// "tear a vWire down within a second").
const reapDeadline = time.Second

// runDeath runs the death scenarios when the dataplane watches for deaths.
func runDeath(t *testing.T, h Harness) {
	if h.SkipDeath != "" {
		t.Skip(h.SkipDeath)
	}
	probe := h.NewDataplane(t, "", fmt.Sprintf("probe-%d", time.Now().UnixNano()%1e9))
	_, watches := probe.(forwarder.Watcher)
	_ = probe.Close()
	if !watches {
		t.Skip("the dataplane does not implement forwarder.Watcher: dead clients are only removed at expiry")
	}
	t.Run("ClientNetNSDeleted", func(t *testing.T) { testClientNetNSDeleted(t, h) })
	t.Run("ClientHolderKilled", func(t *testing.T) { testClientHolderKilled(t, h) })
	t.Run("EndpointNetNSDeleted", func(t *testing.T) { testEndpointNetNSDeleted(t, h) })
	t.Run("ManyClientsDie", func(t *testing.T) {
		if h.SkipConcurrent != "" {
			t.Skip(h.SkipConcurrent)
		}
		n := h.ManyDeaths
		if n == 0 {
			n = 200
		}
		testManyClientsDie(t, h, n)
	})
}

// waitReaped waits until the forwarder no longer holds conn and the
// endpoint got its Close, and returns when the Close arrived.
func (e *env) waitReaped(conn *networkservice.Connection, deadline time.Duration) time.Time {
	e.t.Helper()
	nscID := conn.GetPath().GetPathSegments()[0].GetId()
	fwdID := fwdSegment(conn, e.name).GetId()
	start := time.Now()
	for {
		closedAt, closed := e.closes.get(nscID)
		_, held := e.fwd.srv.Connections()[fwdID]
		if closed && !held {
			return closedAt
		}
		if time.Since(start) > deadline {
			e.t.Fatalf("after %v: forwarder holds the connection: %v, endpoint got Close: %v", deadline, held, closed)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// requireNodeClean fails unless the node namespace and the endpoint
// namespace hold only what they held before and no BPF program was added.
func (e *env) requireNodeClean(what string) {
	e.t.Helper()
	for _, ns := range []nsInfo{e.node, e.endpoint} {
		if got := sortedLinks(e.t, ns.path); !slices.Equal(got, e.before.links[ns.name]) {
			e.t.Fatalf("%s: links in %s: %v, before %v", what, ns.name, got, e.before.links[ns.name])
		}
	}
	var progs []uint32
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		progs = nstest.BPFProgIDs(e.t)
		slices.Sort(progs)
		if slices.Equal(progs, e.before.progs) || time.Now().After(deadline) {
			break
		}
	}
	if !slices.Equal(progs, e.before.progs) {
		e.t.Fatalf("%s: BPF programs %v, before %v", what, progs, e.before.progs)
	}
}

func sortedLinks(t testing.TB, path string) []string {
	l := nstest.Links(t, path)
	slices.Sort(l)
	return l
}

// The client's namespace is deleted with nothing else holding it.
func testClientNetNSDeleted(t *testing.T, h Harness) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})
	killed := time.Now()
	nstest.Delete(t, e.client.name)
	closedAt := e.waitReaped(conn, reapDeadline)
	t.Logf("namespace deleted -> Close at the next hop: %v", closedAt.Sub(killed))
	if n := e.ep.Leases(); n != 0 {
		t.Fatalf("endpoint still holds %d leases", n)
	}
	e.requireNodeClean("after the client namespace died")
}

// The client's namespace is held only by a process (no bind mount), which
// is killed: the namespace goes away with it.
func testClientHolderKilled(t *testing.T, h Harness) {
	e := newEnv(t, h)
	holder := exec.Command("unshare", "--net", "sleep", "600")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })
	url := fmt.Sprintf("file:///proc/%d/ns/net", holder.Process.Pid)
	// unshare needs a moment to move sleep into the new namespace.
	var conn *networkservice.Connection
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		self, _ := nsc.InodeURL("/proc/self/ns/net")
		theirs, err := nsc.InodeURL(fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid))
		if err == nil && theirs != self {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unshare did not enter a new network namespace")
		}
	}
	conn = e.mustRequest(nsc.RequestOptions{IfName: "nsm0", NetNSURL: url})
	killed := time.Now()
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	closedAt := e.waitReaped(conn, reapDeadline)
	t.Logf("holder killed -> Close at the next hop: %v", closedAt.Sub(killed))
	e.requireNodeClean("after the client's only holder died")
}

// The endpoint's namespace dies: the endpoint side is removed, the client
// keeps its interface and Monitor reports the connection DOWN for NSM's
// heal to re-select an endpoint.
func testEndpointNetNSDeleted(t *testing.T, h Harness) {
	e := newEnv(t, h)
	conn := e.mustRequest(nsc.RequestOptions{IfName: "nsm0"})
	fwdID := fwdSegment(conn, e.name).GetId()
	stream, err := e.mon.MonitorConnections(e.ctx(), &networkservice.MonitorScopeSelector{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // initial state
		t.Fatal(err)
	}
	nodeBefore := e.before.links[e.node.name]
	killed := time.Now()
	nstest.Delete(t, e.endpoint.name)
	got := make(chan error, 1)
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				got <- err
				return
			}
			if c, ok := ev.GetConnections()[fwdID]; ok && ev.GetType() == networkservice.ConnectionEventType_UPDATE && c.GetState() == networkservice.State_DOWN {
				got <- nil
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(reapDeadline):
		t.Fatalf("no Monitor UPDATE with state DOWN within %v", reapDeadline)
	}
	t.Logf("endpoint namespace deleted -> Monitor DOWN: %v", time.Since(killed))
	// Nothing of the endpoint side is left on the node; the client side is.
	var nodeLinks []string
	for _, l := range sortedLinks(t, e.node.path) {
		if !slices.Contains(nodeBefore, l) {
			nodeLinks = append(nodeLinks, l)
		}
	}
	// A dataplane with node ends (veth) keeps the client's; one without
	// (a VF is the client's interface itself) has none.
	if len(nodeLinks) > 1 || len(nodeLinks) == 1 && !strings.HasPrefix(nodeLinks[0], "nfc") {
		t.Fatalf("node links besides the baseline: %v, want at most the client's node end", nodeLinks)
	}
	if !slices.Contains(sortedLinks(t, e.client.path), "nsm0") {
		t.Fatal("the client's interface was removed; it must stay for the heal")
	}
	if _, held := e.fwd.srv.Connections()[fwdID]; !held {
		t.Fatal("the connection was dropped; it must stay (DOWN) for the heal")
	}
	if err := nsc.Close(e.ctx(), e.nsc, conn); err != nil {
		t.Fatal(err)
	}
	if got := sortedLinks(t, e.client.path); !slices.Equal(got, e.before.links[e.client.name]) {
		t.Fatalf("client links after Close: %v", got)
	}
}

// Many clients die at once: all are reaped, and a Request issued meanwhile
// is still served. Logs the delay from deletion to the Close at the next
// hop (p50/p99).
func testManyClientsDie(t *testing.T, h Harness, n int) {
	e := newEnv(t, h)
	names := make([]string, n)
	conns := make([]*networkservice.Connection, n)
	for i := range n {
		names[i], _ = nstest.New(t)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conns[i], errs[i] = e.request(nsc.RequestOptions{IfName: "nsm0", NetNSURL: nsc.NetNSURLFromPath("/run/netns/" + names[i])})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
	}

	batch := exec.Command("ip", "-batch", "-")
	var script strings.Builder
	for _, name := range names {
		fmt.Fprintf(&script, "netns del %s\n", name)
	}
	batch.Stdin = strings.NewReader(script.String())
	killed := time.Now()
	if out, err := batch.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch netns del: %v\n%s", err, out)
	}
	t.Logf("ip -batch netns del of %d namespaces took %v", n, time.Since(killed))
	// A new client arrives while the reaper works.
	reqStart := time.Now()
	fresh, err := e.request(nsc.RequestOptions{IfName: "nsm0"})
	if err != nil {
		t.Fatalf("Request during the reaping: %v", err)
	}
	reqTook := time.Since(reqStart)

	delays := make([]time.Duration, n)
	for i, c := range conns {
		delays[i] = e.waitReaped(c, 30*time.Second).Sub(killed)
	}
	slices.Sort(delays)
	t.Logf("%d clients died at once: deletion -> Close at the next hop p50 %v, p99 %v, max %v; a Request served meanwhile took %v",
		n, delays[n/2], delays[n*99/100], delays[n-1], reqTook)
	if got := len(e.fwd.srv.Connections()); got != 1 {
		t.Fatalf("forwarder holds %d connections, want only the fresh one", got)
	}
	_, eAddr := addrs(t, fresh, false)
	e.ping(e.client, eAddr)
	if err := nsc.Close(e.ctx(), e.nsc, fresh); err != nil {
		t.Fatal(err)
	}
	e.requireNodeClean(fmt.Sprintf("after %d deaths", n))
}
