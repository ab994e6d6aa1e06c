package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsmfwd/nsmfwd/controlplane/endpoint"
	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func getenv(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func parse(t *testing.T, name string, env map[string]string, args ...string) (runner, error) {
	t.Helper()
	for _, c := range commands {
		if c.name == name {
			fs := flag.NewFlagSet(name, flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			return c.parse(fs, envOf(env), args)
		}
	}
	t.Fatalf("no command %q", name)
	return nil, nil
}

func envOf(m map[string]string) env {
	return env{stdout: io.Discard, stderr: io.Discard, getenv: getenv(m)}
}

func TestParseConnect(t *testing.T) {
	r, err := parse(t, "connect", map[string]string{"NSM_CONNECT_TO": "tcp://10.0.0.1:5001"},
		"--service", "icmp", "--netns", "/run/netns/c", "--inode", "--ifname", "nsm0", "--payload", "IP",
		"--id", "x1", "--lifetime", "1m", "--output", "json", "--labels", "app=a, tier = db")
	if err != nil {
		t.Fatal(err)
	}
	c := r.(*connectCmd)
	if c.Addr != "tcp://10.0.0.1:5001" || c.Service != "icmp" || c.NetNS != "/run/netns/c" || !c.Inode || c.IfName != "nsm0" ||
		c.Payload != "IP" || c.ID != "x1" || c.Lifetime != time.Minute || c.Output != "json" || c.Labels["app"] != "a" || c.Labels["tier"] != "db" {
		t.Fatalf("parsed %+v", c)
	}
	r, err = parse(t, "connect", nil, "--service", "s", "--netns-url", "inode://1/2")
	if err != nil {
		t.Fatal(err)
	}
	c = r.(*connectCmd)
	if c.Addr != defaultAddr || c.Payload != "ETHERNET" || c.Output != "text" || c.Lifetime != 10*time.Minute {
		t.Fatalf("defaults %+v", c)
	}
	if u, err := c.netnsURL(); err != nil || u != "inode://1/2" {
		t.Fatalf("netnsURL %q %v", u, err)
	}
	c.NetNSURL, c.NetNS = "", "/run/netns/x"
	if u, _ := c.netnsURL(); u != "file:///run/netns/x" {
		t.Fatalf("netnsURL %q", u)
	}

	for _, args := range [][]string{
		{"--netns", "/x"},  // no service
		{"--service", "s"}, // no namespace
		{"--service", "s", "--netns", "/x", "--netns-url", "file:///x"}, // both
		{"--service", "s", "--netns-url", "file:///x", "--inode"},
		{"--service", "s", "--netns", "/x", "--payload", "MPLS"},
		{"--service", "s", "--netns", "/x", "--output", "yaml"},
		{"--service", "s", "--netns", "/x", "--addr", "http://x"},
		{"--service", "s", "--netns", "/x", "--labels", "novalue"},
		{"--service", "s", "--netns", "/x", "--lifetime", "0s"},
		{"--service", "s", "--netns", "/x", "extra"},
		{"--bogus"},
	} {
		if _, err := parse(t, "connect", nil, args...); err == nil {
			t.Errorf("%q: want error", args)
		} else if _, ok := errors.AsType[usageError](err); !ok {
			t.Errorf("%q: error %T %v is not a usage error", args, err, err)
		}
	}
}

func TestParseOthers(t *testing.T) {
	r, err := parse(t, "close", nil, "--id", "a", "--addr", "unix:///tmp/f.sock", "--forwarder", "fwd")
	if err != nil {
		t.Fatal(err)
	}
	if c := r.(*byIDCmd); c.ID != "a" || c.refresh || c.Addr != "unix:///tmp/f.sock" || c.Forwarder != "fwd" {
		t.Fatalf("close %+v", c)
	}
	if _, err := parse(t, "close", nil); err == nil {
		t.Fatal("close without --id: want error")
	}
	if _, err := parse(t, "close", nil, "--id", "a", "--output", "json"); err == nil {
		t.Fatal("close has no --output")
	}
	r, err = parse(t, "refresh", nil, "--id", "a", "--lifetime", "2m")
	if err != nil {
		t.Fatal(err)
	}
	if c := r.(*byIDCmd); !c.refresh || c.Lifetime != 2*time.Minute {
		t.Fatalf("refresh %+v", c)
	}
	if _, err := parse(t, "list", nil, "--output", "json"); err != nil {
		t.Fatal(err)
	}
	if _, err := parse(t, "monitor", nil, "x"); err == nil {
		t.Fatal("monitor with an argument: want error")
	}
	if _, err := parse(t, "list", nil, "-h"); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestGRPCTarget(t *testing.T) {
	for in, want := range map[string]string{
		"unix:///var/lib/x.sock": "unix:///var/lib/x.sock",
		"tcp://1.2.3.4:5":        "passthrough:///1.2.3.4:5",
		"localhost:5001":         "passthrough:///localhost:5001",
		"[::1]:5001":             "passthrough:///[::1]:5001",
	} {
		if got, err := grpcTarget(in); err != nil || got != want {
			t.Errorf("grpcTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"unix://", "tcp://", "http://x:1", "nothing"} {
		if _, err := grpcTarget(in); err == nil {
			t.Errorf("grpcTarget(%q): want error", in)
		}
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"help"}, &out, &errb, getenv(nil)); code != 0 || !strings.Contains(out.String(), "connect") {
		t.Fatalf("help: %d %q", code, out.String())
	}
	for _, c := range commands {
		if !strings.Contains(out.String(), c.name) {
			t.Errorf("help lacks %s", c.name)
		}
	}
	out.Reset()
	if code := run(t.Context(), []string{"help", "connect"}, &out, &errb, getenv(nil)); code != 0 || !strings.Contains(out.String(), "-netns-url") {
		t.Fatalf("help connect: %d %q", code, out.String())
	}
	if code := run(t.Context(), nil, &out, &errb, getenv(nil)); code != 2 {
		t.Fatalf("no args: %d", code)
	}
	if code := run(t.Context(), []string{"frob"}, &out, &errb, getenv(nil)); code != 2 {
		t.Fatalf("unknown command: %d", code)
	}
}

func TestDescribe(t *testing.T) {
	err := status.Error(codes.InvalidArgument, "bad name")
	if got := describe(err); got != "InvalidArgument: bad name" {
		t.Fatalf("describe = %q", got)
	}
	if got := describe(wrap("request", err)); got != "request: InvalidArgument: bad name" {
		t.Fatalf("describe wrapped = %q", got)
	}
}

func wrap(op string, err error) error { return &wrapped{op, err} }

type wrapped struct {
	op  string
	err error
}

func (w *wrapped) Error() string { return w.op + ": " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// fakeForwarder stands in for nsmfwd: it adds its "fwd" segment with
// counters, calls the endpoint in-process and reports connections on its
// monitor.
type fakeForwarder struct {
	nse *endpoint.Endpoint

	mu     sync.Mutex
	conns  map[string]*networkservice.Connection // by forwarder segment id
	closed []string
}

func (f *fakeForwarder) Request(ctx context.Context, req *networkservice.NetworkServiceRequest) (*networkservice.Connection, error) {
	conn := req.GetConnection().Clone()
	prev, err := nsmpath.Update(conn, "fwd", "fwd-"+req.GetConnection().GetId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	clientMech := req.GetMechanismPreferences()[0].Clone()
	if clientMech.GetParameters()[forwarder.ParamIfName] == "" {
		clientMech.Parameters[forwarder.ParamIfName] = "nsm-c"
	}
	conn.Mechanism = nil
	out, err := f.nse.Request(ctx, &networkservice.NetworkServiceRequest{Connection: conn,
		MechanismPreferences: []*networkservice.Mechanism{{Type: "KERNEL"}}})
	if err != nil {
		return nil, err
	}
	out.Mechanism = clientMech
	out.GetPath().GetPathSegments()[out.GetPath().GetIndex()].Metrics = nsmpath.Metrics(forwarder.Stats{
		ClientToEndpoint: forwarder.Counters{Packets: 3, Bytes: 300, Drops: 1},
		EndpointToClient: forwarder.Counters{Packets: 2, Bytes: 200},
	})
	f.mu.Lock()
	f.conns[out.GetId()] = out.Clone()
	f.mu.Unlock()
	nsmpath.Restore(out, prev)
	return out, nil
}

func (f *fakeForwarder) Close(ctx context.Context, conn *networkservice.Connection) (*emptypb.Empty, error) {
	id, ok := nsmpath.Find(conn, "fwd")
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "no fwd segment at or after path.index")
	}
	f.mu.Lock()
	delete(f.conns, id)
	f.closed = append(f.closed, id)
	f.mu.Unlock()
	// Like a forwarder, call the next hop in our own frame.
	next := conn.Clone()
	if _, err := nsmpath.Update(next, "fwd", id); err != nil {
		return nil, err
	}
	return f.nse.Close(ctx, next)
}

func (f *fakeForwarder) MonitorConnections(_ *networkservice.MonitorScopeSelector, srv networkservice.MonitorConnection_MonitorConnectionsServer) error {
	f.mu.Lock()
	conns := make(map[string]*networkservice.Connection, len(f.conns))
	for k, v := range f.conns {
		conns[k] = v.Clone()
	}
	f.mu.Unlock()
	if err := srv.Send(&networkservice.ConnectionEvent{Type: networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER, Connections: conns}); err != nil {
		return err
	}
	if err := srv.Send(&networkservice.ConnectionEvent{Type: networkservice.ConnectionEventType_DELETE, Connections: conns}); err != nil {
		return err
	}
	<-srv.Context().Done()
	return nil
}

func startFake(t *testing.T) (*fakeForwarder, string) {
	t.Helper()
	nse, err := endpoint.New(endpoint.Options{Name: "nse", NetNSURL: "inode://1/2", NetworkService: "icmp",
		CIDRs: []netip.Prefix{netip.MustParsePrefix("172.16.1.0/29")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nse.Shutdown)
	f := &fakeForwarder{nse: nse, conns: make(map[string]*networkservice.Connection)}
	sock := filepath.Join(t.TempDir(), "fwd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	networkservice.RegisterNetworkServiceServer(s, f)
	networkservice.RegisterMonitorConnectionServer(s, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(l)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return f, "unix://" + sock
}

func ctl(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(ctx, args, &out, &errb, getenv(nil))
	return out.String(), errb.String(), code
}

func TestEndToEnd(t *testing.T) {
	f, addr := startFake(t)
	ctx := t.Context()

	out, errs, code := ctl(t, ctx, "connect", "--addr", addr, "--service", "icmp", "--netns", "/run/netns/c", "--ifname", "nsm0", "--id", "c1")
	if code != 0 {
		t.Fatalf("connect: %d %s", code, errs)
	}
	for _, want := range []string{"c1", "fwd-c1", "nsm0", "file:///run/netns/c", "172.16.1.2/32", "172.16.1.1/32"} {
		if !strings.Contains(out, want) {
			t.Errorf("connect output lacks %q:\n%s", want, out)
		}
	}

	out, errs, code = ctl(t, ctx, "connect", "--addr", addr, "--service", "icmp", "--netns-url", "file:///run/netns/d", "--id", "c2", "--output", "json")
	if code != 0 {
		t.Fatalf("connect json: %d %s", code, errs)
	}
	var ci connInfo
	if err := json.Unmarshal([]byte(out), &ci); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if ci.ID != "c2" || ci.IfName != "nsm-c" || len(ci.ClientAddrs) != 1 || ci.Counters[nsmpath.MetricClientRxPackets] != 3 {
		t.Fatalf("connect json %+v", ci)
	}

	// Errors carry the gRPC code.
	_, errs, code = ctl(t, ctx, "connect", "--addr", addr, "--service", "other", "--netns", "/run/netns/c")
	if code != 1 || !strings.Contains(errs, "NotFound") {
		t.Fatalf("wrong service: %d %q", code, errs)
	}

	out, errs, code = ctl(t, ctx, "list", "--addr", addr)
	if code != 0 {
		t.Fatalf("list: %d %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "c1 ") || !strings.HasPrefix(lines[2], "c2 ") {
		t.Fatalf("list:\n%s", out)
	}
	if fields := strings.Fields(lines[1]); len(fields) != 12 || fields[7] != "3" || fields[8] != "300" || fields[9] != "2" || fields[11] != "1" {
		t.Fatalf("list row %q", fields)
	}
	out, _, code = ctl(t, ctx, "list", "--addr", addr, "--output", "json")
	var infos []connInfo
	if err := json.Unmarshal([]byte(out), &infos); code != 0 || err != nil || len(infos) != 2 {
		t.Fatalf("list json: %d %v %s", code, err, out)
	}

	out, errs, code = ctl(t, ctx, "refresh", "--addr", addr, "--id", "c1", "--lifetime", "20m")
	if code != 0 || !strings.Contains(out, "172.16.1.2/32") {
		t.Fatalf("refresh: %d %s %s", code, out, errs)
	}

	// Close by the forwarder's id.
	out, errs, code = ctl(t, ctx, "close", "--addr", addr, "--id", "fwd-c1")
	if code != 0 || !strings.Contains(out, "closed c1") {
		t.Fatalf("close: %d %q %q", code, out, errs)
	}
	_, errs, code = ctl(t, ctx, "close", "--addr", addr, "--id", "c1")
	if code != 1 || !strings.Contains(errs, "NotFound") {
		t.Fatalf("second close: %d %q", code, errs)
	}
	f.mu.Lock()
	closed := f.closed
	f.mu.Unlock()
	if len(closed) != 1 || closed[0] != "fwd-c1" || f.nse.Leases() != 1 {
		t.Fatalf("closed %q, endpoint leases %d", closed, f.nse.Leases())
	}

	// monitor streams until interrupted.
	mctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	out, errs, code = ctl(t, mctx, "monitor", "--addr", addr)
	if code != 0 || !strings.Contains(out, "INITIAL_STATE_TRANSFER c2 ") || !strings.Contains(out, "DELETE c2 ") {
		t.Fatalf("monitor: %d %q %q", code, out, errs)
	}
}

func TestConnectKeep(t *testing.T) {
	f, addr := startFake(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan int, 1)
	var out, errb syncBuffer
	go func() {
		done <- run(ctx, []string{"connect", "--addr", addr, "--service", "icmp", "--netns", "/x", "--id", "k", "--keep", "--lifetime", "3s"},
			&out, &errb, getenv(nil))
	}()
	// Interrupt only once the connection is printed: an interrupt during
	// the first Request cancels it (and fails), as it should.
	deadline := time.Now().Add(5 * time.Second)
	for (f.nse.Leases() == 0 || out.Len() == 0) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("connect --keep: %d %s", code, errb.String())
	}
	if f.nse.Leases() != 0 {
		t.Fatal("connect --keep did not close on interrupt")
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
