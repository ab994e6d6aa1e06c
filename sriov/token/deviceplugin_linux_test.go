package token_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	dp "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/nsmfwd/nsmfwd/sriov/token"
)

// fakeKubelet serves kubelet's Registration service on kubelet.sock.
type fakeKubelet struct {
	dp.UnimplementedRegistrationServer
	t    *testing.T
	dir  string
	reqs chan *dp.RegisterRequest
	srv  *grpc.Server
	done chan struct{}
}

func startKubelet(t *testing.T, dir string) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{t: t, dir: dir, reqs: make(chan *dp.RegisterRequest, 16)}
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *fakeKubelet) start() {
	k.t.Helper()
	lis, err := net.Listen("unix", filepath.Join(k.dir, "kubelet.sock"))
	if err != nil {
		k.t.Fatal(err)
	}
	k.srv = grpc.NewServer()
	dp.RegisterRegistrationServer(k.srv, k)
	k.done = make(chan struct{})
	srv, done := k.srv, k.done
	go func() { defer close(done); _ = srv.Serve(lis) }()
}

func (k *fakeKubelet) stop() {
	if k.srv != nil {
		k.srv.Stop()
		<-k.done
		k.srv = nil
	}
}

// restart is what kubelet does at its start: a new kubelet.sock, and every
// plugin socket in the directory removed.
func (k *fakeKubelet) restart() {
	k.t.Helper()
	k.stop()
	_ = os.Remove(filepath.Join(k.dir, "kubelet.sock"))
	socks, _ := filepath.Glob(filepath.Join(k.dir, "nsmfwd-sriov-*.sock"))
	for _, s := range socks {
		if err := os.Remove(s); err != nil {
			k.t.Fatal(err)
		}
	}
	k.start()
}

func (k *fakeKubelet) Register(_ context.Context, req *dp.RegisterRequest) (*dp.Empty, error) {
	k.reqs <- req
	return &dp.Empty{}, nil
}

func (k *fakeKubelet) registration(want int) []*dp.RegisterRequest {
	k.t.Helper()
	var out []*dp.RegisterRequest
	timeout := time.After(10 * time.Second)
	for len(out) < want {
		select {
		case r := <-k.reqs:
			out = append(out, r)
		case <-timeout:
			k.t.Fatalf("%d registrations, want %d", len(out), want)
		}
	}
	slices.SortFunc(out, func(a, b *dp.RegisterRequest) int {
		switch {
		case a.ResourceName < b.ResourceName:
			return -1
		case a.ResourceName > b.ResourceName:
			return 1
		}
		return 0
	})
	return out
}

func dialPlugin(t *testing.T, sock string) dp.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return dp.NewDevicePluginClient(conn)
}

func listDevices(t *testing.T, c dp.DevicePluginClient) []*dp.Device {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := c.ListAndWatch(ctx, &dp.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return r.GetDevices()
}

func serveTest(t *testing.T, dir string, counts map[string]int) (*token.Pool, *token.Plugins) {
	t.Helper()
	pool, err := token.Open(t.TempDir(), counts)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := token.Serve(context.Background(), token.Options{Dir: dir, Pool: pool, CheckInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ps.Stop)
	return pool, ps
}

func TestDevicePlugin(t *testing.T) {
	dir := t.TempDir()
	kubelet := startKubelet(t, dir)
	// "bad_domain/x" is no resource name kubelet takes: not served.
	pool, _ := serveTest(t, dir, map[string]int{"worker.domain/10G": 3, "worker.domain/intel": 2, "bad_domain/x": 1})

	regs := kubelet.registration(2)
	for i, name := range []string{"worker.domain/10G", "worker.domain/intel"} {
		r := regs[i]
		if r.GetVersion() != dp.Version || r.GetResourceName() != name || r.GetEndpoint() != token.SocketName(name) {
			t.Fatalf("registration %d: %v", i, r)
		}
		if !r.GetOptions().GetGetPreferredAllocationAvailable() || r.GetOptions().GetPreStartRequired() {
			t.Fatalf("registration options %v", r.GetOptions())
		}
	}
	if token.SocketName("worker.domain/10G") != "nsmfwd-sriov-worker.domain_10G.sock" {
		t.Fatalf("socket name %s", token.SocketName("worker.domain/10G"))
	}
	name := "worker.domain/10G"
	ids := pool.IDs(name)
	c := dialPlugin(t, filepath.Join(dir, token.SocketName(name)))
	ctx := context.Background()

	devs := listDevices(t, c)
	var got []string
	for _, d := range devs {
		if d.GetHealth() != dp.Healthy {
			t.Errorf("device %s: %s", d.GetID(), d.GetHealth())
		}
		got = append(got, d.GetID())
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("devices %v, want %v", got, ids)
	}

	resp, err := c.Allocate(ctx, &dp.AllocateRequest{ContainerRequests: []*dp.ContainerAllocateRequest{
		{DevicesIds: []string{ids[0], ids[2]}}, {DevicesIds: []string{ids[1]}}}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.GetContainerResponses()); n != 2 {
		t.Fatalf("%d container responses", n)
	}
	env := resp.GetContainerResponses()[0].GetEnvs()
	if len(env) != 1 || env["NSM_SRIOV_TOKENS_worker.domain/10G"] != ids[0]+","+ids[2] {
		t.Fatalf("env %v", env)
	}
	if env := resp.GetContainerResponses()[1].GetEnvs(); env["NSM_SRIOV_TOKENS_worker.domain/10G"] != ids[1] {
		t.Fatalf("env %v", env)
	}
	// Another name's ID is not this plugin's.
	for _, bad := range []string{"no-such-id", pool.IDs("worker.domain/intel")[0]} {
		_, err = c.Allocate(ctx, &dp.AllocateRequest{ContainerRequests: []*dp.ContainerAllocateRequest{{DevicesIds: []string{ids[0], bad}}}})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("allocate %s: %v", bad, err)
		}
	}

	opts, err := c.GetDevicePluginOptions(ctx, &dp.Empty{})
	if err != nil || !opts.GetGetPreferredAllocationAvailable() {
		t.Fatalf("options %v, %v", opts, err)
	}
	pref, err := c.GetPreferredAllocation(ctx, &dp.PreferredAllocationRequest{ContainerRequests: []*dp.ContainerPreferredAllocationRequest{
		{AvailableDeviceIDs: []string{ids[2], ids[1]}, MustIncludeDeviceIDs: []string{ids[2]}, AllocationSize: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := pref.GetContainerResponses()[0].GetDeviceIDs(); !slices.Equal(got, []string{ids[2], ids[1]}) {
		t.Fatalf("preferred %v", got)
	}
	if _, err := c.PreStartContainer(ctx, &dp.PreStartContainerRequest{DevicesIds: ids[:1]}); err != nil {
		t.Fatal(err)
	}

	// Kubelet restarts: new kubelet.sock, plugin sockets removed. The
	// plugins listen again and register again.
	kubelet.restart()
	regs = kubelet.registration(2)
	if regs[0].GetResourceName() != "worker.domain/10G" || regs[1].GetResourceName() != "worker.domain/intel" {
		t.Fatalf("re-registrations %v", regs)
	}
	c2 := dialPlugin(t, filepath.Join(dir, token.SocketName(name)))
	if n := len(listDevices(t, c2)); n != 3 {
		t.Fatalf("%d devices after kubelet restart", n)
	}
}

// TestDevicePluginKubeletLater: plugins started before kubelet register
// when its socket appears; Stop removes their sockets.
func TestDevicePluginKubeletLater(t *testing.T) {
	dir := t.TempDir()
	pool, err := token.Open(t.TempDir(), map[string]int{"worker.domain/10G": 1})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := token.Serve(context.Background(), token.Options{Dir: dir, Pool: pool, CheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Stop()
	time.Sleep(50 * time.Millisecond)
	kubelet := startKubelet(t, dir)
	if r := kubelet.registration(1)[0]; r.GetResourceName() != "worker.domain/10G" {
		t.Fatalf("registration %v", r)
	}
	ps.Stop()
	if _, err := os.Stat(filepath.Join(dir, token.SocketName("worker.domain/10G"))); !os.IsNotExist(err) {
		t.Fatalf("plugin socket after Stop: %v", err)
	}
}

func TestValidResourceName(t *testing.T) {
	for name, ok := range map[string]bool{
		"worker.domain/10G": true, "sriov-a.example.net/25G": true, "a/b": true,
		"Worker.domain/10G": false, "bad_domain/x": false, "nodomain": false, "a/b/c": false,
		"kubernetes.io/x": false, "a/-x": false,
	} {
		if err := token.ValidResourceName(name); (err == nil) != ok {
			t.Errorf("%s: %v", name, err)
		}
	}
}
