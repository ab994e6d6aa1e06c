// Package e2e drives the real binaries (nsmfwd, nse, nsmctl) the way an
// operator and NSM do: separate processes, unix sockets, SIGKILL and restart.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

type world struct {
	t                      *testing.T
	bin, dir, name         string
	node, client, endpoint string // namespace names
	nodePath, clientPath   string
	epPath                 string
	fwd                    *exec.Cmd
	fwdEnv                 []string // extra environment of nsmfwd
}

func buildBinaries(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func start(t *testing.T, w *world, name string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.Create(filepath.Join(w.dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- %s log:\n%s", name, b)
		}
	})
	return cmd
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear", path)
}

func (w *world) startForwarder() {
	w.t.Helper()
	sock := filepath.Join(w.dir, "fwd.sock")
	_ = os.Remove(sock)
	w.fwd = start(w.t, w, "nsmfwd", append([]string{
		"NSM_NAME=" + w.name,
		"NSM_LISTEN_ON=unix://" + sock,
		"NSM_CONNECT_TO=unix://" + filepath.Join(w.dir, "nse.sock"),
		"NSM_STATE_DIR=" + filepath.Join(w.dir, "state"),
		"NSM_LOG_LEVEL=DEBUG",
		"NSM_DIAL_TIMEOUT=300ms",
		// nse and nsmctl speak plaintext; SPIFFE is covered by test/interop.
		"NSM_INSECURE=true",
	}, w.fwdEnv...), "nsenter", "--net="+w.nodePath, filepath.Join(w.bin, "nsmfwd"))
	waitSocket(w.t, sock)
}

func (w *world) links() map[string][]string {
	out := map[string][]string{}
	for _, p := range []string{w.nodePath, w.clientPath, w.epPath} {
		l := nstest.Links(w.t, p)
		slices.Sort(l)
		out[p] = l
	}
	return out
}

func (w *world) nsmctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(w.bin, "nsmctl"), args...)
	cmd.Env = append(os.Environ(), "NSM_CONNECT_TO=unix://"+filepath.Join(w.dir, "fwd.sock"))
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

func (w *world) ping(ns string, addr netip.Addr) error {
	out, err := nstest.Exec(w.t, ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", addr.String())
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w\n%s", addr, ns, err, out)
	}
	return nil
}

// TestSIGKILLRestart: connections survive SIGKILL of the forwarder, traffic
// flows while it is down, and the restarted forwarder lists them, accepts a
// refresh and duplicates or leaks nothing.
func TestSIGKILLRestart(t *testing.T) {
	w := newWorld(t, "e2e")
	progsBefore := nstest.BPFProgIDs(t)
	linksBefore := w.links()

	// The forwarder starts before its next hop, as it may before NSMgr: it
	// serves anyway and answers Unavailable until the next hop is up.
	w.startForwarder()
	_, client := w.dialForwarder()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reqOpts := func(i int) nsc.RequestOptions {
		return nsc.RequestOptions{NetworkService: "icmp-responder", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: fmt.Sprintf("nsm%d", i)}
	}
	if _, err := nsc.Request(ctx, client, reqOpts(0)); status.Code(err) != codes.Unavailable {
		t.Fatalf("Request with the next hop down: got %v, want Unavailable", err)
	}

	w.startNSE("NSM_SERVICE_NAMES=icmp-responder", "NSM_CIDR_PREFIX=169.254.0.0/16")

	var conns []*networkservice.Connection
	for i := range 3 {
		c, err := nsc.Request(ctx, client, reqOpts(i))
		// The forwarder reconnects to the next hop within its backoff (≤ 2 s).
		for deadline := time.Now().Add(5 * time.Second); i == 0 && status.Code(err) == codes.Unavailable && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			c, err = nsc.Request(ctx, client, reqOpts(i))
		}
		if err != nil {
			t.Fatalf("Request %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		if err := w.ping(w.client, epAddr(c)); err != nil {
			t.Fatal(err)
		}
	}
	linksUp := w.links()
	progsUp := nstest.BPFProgIDs(t)

	// SIGKILL: no cleanup code runs.
	if err := w.fwd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = w.fwd.Wait()
	for _, c := range conns {
		if err := w.ping(w.client, epAddr(c)); err != nil {
			t.Fatalf("while the forwarder is down: %v", err)
		}
	}

	w.startForwarder()
	out, err := w.nsmctl("list")
	if err != nil {
		t.Fatalf("nsmctl list: %v\n%s", err, out)
	}
	for _, c := range conns {
		if !strings.Contains(out, c.GetId()) && !strings.Contains(out, c.GetPath().GetPathSegments()[1].GetId()) {
			t.Fatalf("restarted forwarder does not list %s:\n%s", c.GetId(), out)
		}
	}
	for i, c := range conns {
		if conns[i], err = nsc.Refresh(ctx, client, c, time.Minute); err != nil {
			t.Fatalf("refresh after restart: %v", err)
		}
	}
	if got := w.links(); !equalLinks(got, linksUp) {
		t.Fatalf("links changed across restart + refresh:\n%v\n%v", linksUp, got)
	}
	if got := nstest.BPFProgIDs(t); !slices.Equal(sorted(got), sorted(progsUp)) {
		t.Fatalf("BPF programs changed across restart + refresh: %v -> %v", progsUp, got)
	}
	for _, c := range conns {
		if err := w.ping(w.client, epAddr(c)); err != nil {
			t.Fatal(err)
		}
	}

	// SIGTERM is graceful and also leaves the vWires in place.
	if err := w.fwd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w.fwd.Wait(); err != nil {
		t.Fatalf("nsmfwd exit after SIGTERM: %v", err)
	}
	if err := w.ping(w.client, epAddr(conns[0])); err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	w.startForwarder()
	for _, c := range conns {
		if err := nsc.Close(ctx, client, c); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !equalLinks(w.links(), linksBefore) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := w.links(); !equalLinks(got, linksBefore) {
		t.Fatalf("links left after Close:\n%v\n%v", linksBefore, got)
	}
	if got := nstest.BPFProgIDs(t); !slices.Equal(sorted(got), sorted(progsBefore)) {
		t.Fatalf("BPF programs left after Close: %v -> %v", progsBefore, got)
	}
	// A graceful stop with no connection left removes the forwarder's
	// directory in bpffs too.
	if err := w.fwd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = w.fwd.Wait()
	pinDir := filepath.Join("/sys/fs/bpf/nsmfwd", w.name)
	if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
		left, _ := filepath.Glob(pinDir + "/*")
		t.Fatalf("%s still exists after the last Close and SIGTERM (%v); holds %v", pinDir, err, left)
	}
}

func equalLinks(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func sorted(s []uint32) []uint32 { s = slices.Clone(s); slices.Sort(s); return s }

// epAddr is the endpoint's first address of conn.
func epAddr(c *networkservice.Connection) netip.Addr {
	return netip.MustParsePrefix(c.GetContext().GetIpContext().GetDstIpAddrs()[0]).Addr()
}

// newWorld builds the binaries and three throwaway namespaces (node,
// client, endpoint) for a test whose forwarder is named prefix-<n>; the
// forwarder's pins are removed whatever happens.
func newWorld(t *testing.T, prefix string) *world {
	t.Helper()
	nstest.RequireRoot(t)
	w := &world{t: t, bin: buildBinaries(t), dir: t.TempDir(), name: fmt.Sprintf("%s-%d", prefix, time.Now().UnixNano()%1e9)}
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join("/sys/fs/bpf/nsmfwd", w.name)) })
	w.node, w.nodePath = nstest.New(t)
	w.client, w.clientPath = nstest.New(t)
	w.endpoint, w.epPath = nstest.New(t)
	return w
}

// startNSE runs nse in the endpoint namespace with env added to its name
// and socket, and waits for its socket.
func (w *world) startNSE(env ...string) {
	w.t.Helper()
	sock := filepath.Join(w.dir, "nse.sock")
	start(w.t, w, "nse", append([]string{"NSM_NAME=nse-" + w.name, "NSM_LISTEN_ON=unix://" + sock}, env...),
		"ip", "netns", "exec", w.endpoint, filepath.Join(w.bin, "nse"))
	waitSocket(w.t, sock)
}

// dialForwarder returns a client to the forwarder's socket, closed at the
// end of the test.
func (w *world) dialForwarder() (*grpc.ClientConn, networkservice.NetworkServiceClient) {
	w.t.Helper()
	cc, err := grpc.NewClient("unix://"+filepath.Join(w.dir, "fwd.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = cc.Close() })
	return cc, networkservice.NewNetworkServiceClient(cc)
}
