package interop

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// nsmBinaries are NSM's own v1.18.0 commands tier 2 runs; the module proxy
// does not serve them, so they are built by hand and given in
// NSM_CMD_BIN_DIR.
var nsmBinaries = []string{"cmd-registry-memory", "cmd-nsmgr", "cmd-nse-icmp-responder", "cmd-nsc"}

// TestNSMBinaries is tier 2: NSM's own registry, NSMgr, icmp-responder NSE
// and NSC, each a process with its own SVID from the fake Workload API
// (they have no insecure mode), and nsmfwd, built from this checkout, as
// the node's only forwarder, with SPIFFE too. NSM's NSC must get its nsm-1
// interface and ping NSM's icmp-responder through nsmfwd; once the NSC is
// killed, nsmfwd must remove everything when NSM closes the connection (the
// NSC's token expires, NSMgr closes downstream).
func TestNSMBinaries(t *testing.T) {
	binDir := os.Getenv("NSM_CMD_BIN_DIR")
	if binDir == "" {
		t.Skipf("tier 2 skipped: set NSM_CMD_BIN_DIR to a directory holding NSM v1.18.0's %s (built by hand; the module proxy does not serve them)",
			strings.Join(nsmBinaries, ", "))
	}
	for _, b := range nsmBinaries {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			t.Fatalf("NSM_CMD_BIN_DIR=%s: no executable %s (%v)", binDir, b, err)
		}
	}
	nstest.RequireRoot(t)
	for _, tool := range []string{"ip", "nsenter", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("tier 2 needs %s: %v", tool, err)
		}
	}

	d := &procWorld{t: t, dir: t.TempDir(), name: "nsmfwd-t2-" + shortID()}
	var node, clientNS, epNS nsInfo
	for _, ns := range []*nsInfo{&node, &clientNS, &epNS} {
		ns.name, ns.path = nstest.New(t)
	}
	w := &world{t: t, node: node, client: clientNS, endpoint: epNS}
	w.before = w.snapshot()
	// NSM's NSC may rewrite /etc/resolv.conf for its DNS proxy and not
	// restore it: give its namespace a private copy (ip netns exec binds
	// /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
	d.privateResolvConf(clientNS.name)
	d.privateResolvConf(epNS.name)
	// NSM's NSC checks the datapath with unprivileged ICMP sockets (its
	// heal pings the endpoint), which a namespace allows only with
	// ping_group_range opened, as a pod spec's sysctls do.
	for _, ns := range []string{clientNS.name, epNS.name} {
		if out, err := nstest.Exec(t, ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"); err != nil {
			t.Fatalf("ping_group_range in %s: %v %s", ns, err, out)
		}
	}

	spire, err := identitytest.NewWorkloadAPI(d.dir, trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(spire.Stop)
	sock := func(name string) string {
		s, err := spire.Socket(name, spiffeID(name))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	fwdBin := d.buildNSMFwd()
	regPort, mgrPort := freePort(t), freePort(t)
	nsmSock := filepath.Join(d.dir, "nsm.io.sock")
	fwdSock := filepath.Join(d.dir, "nsmfwd.sock")
	common := []string{"NSM_LOG_LEVEL=DEBUG", "TMPDIR=" + d.dir}

	d.start("registry", append([]string{
		"SPIFFE_ENDPOINT_SOCKET=" + sock("registry"),
		fmt.Sprintf("NSM_LISTEN_ON=tcp://127.0.0.1:%d", regPort),
	}, common...), filepath.Join(binDir, "cmd-registry-memory"))
	d.waitTCP(regPort)

	d.start("nsmgr", append([]string{
		"SPIFFE_ENDPOINT_SOCKET=" + sock("nsmgr"),
		"NSM_NAME=nsmgr-" + d.name,
		fmt.Sprintf("NSM_LISTEN_ON=unix://%s,tcp://127.0.0.1:%d", nsmSock, mgrPort),
		fmt.Sprintf("NSM_REGISTRY_URL=tcp://127.0.0.1:%d", regPort),
	}, common...), filepath.Join(binDir, "cmd-nsmgr"))
	d.waitFile(nsmSock)

	pinDir := filepath.Join("/sys/fs/bpf/nsmfwd", d.name)
	t.Cleanup(func() { _ = os.RemoveAll(pinDir) })
	d.start("nsmfwd", []string{
		"SPIFFE_ENDPOINT_SOCKET=" + sock(d.name),
		"NSM_NAME=" + d.name,
		"NSM_LISTEN_ON=unix://" + fwdSock,
		"NSM_CONNECT_TO=unix://" + nsmSock,
		"NSM_STATE_DIR=" + filepath.Join(d.dir, "state"),
		"NSM_LOG_LEVEL=DEBUG",
	}, "nsenter", "--net="+node.path, fwdBin)
	d.waitFile(fwdSock)

	d.start("nse", append([]string{
		"SPIFFE_ENDPOINT_SOCKET=" + sock("nse-"+d.name),
		"NSM_NAME=nse-" + d.name,
		"NSM_CONNECT_TO=unix://" + nsmSock,
		"NSM_SERVICE_NAMES=icmp-responder",
		"NSM_CIDR_PREFIX=172.16.79.0/24",
	}, common...), "ip", "netns", "exec", epNS.name, filepath.Join(binDir, "cmd-nse-icmp-responder"))

	nsc := d.start("nsc", append([]string{
		"SPIFFE_ENDPOINT_SOCKET=" + sock("nsc-"+d.name),
		"NSM_NAME=nsc-" + d.name,
		"NSM_CONNECT_TO=unix://" + nsmSock,
		"NSM_NETWORK_SERVICES=kernel://icmp-responder/nsm-1",
		"NSM_LOCAL_DNS_SERVER_ENABLED=false",
		// Short, so NSM closes the connection soon after the NSC dies.
		// NSMgr closes a connection at the caller's token expiry minus the
		// caller's request timeout, so the timeout must be shorter than the
		// lifetime: with 60 s against 30 s NSMgr closed every connection as
		// soon as it was made and the NSC healed in a loop.
		"NSM_MAX_TOKEN_LIFETIME=30s",
		"NSM_REQUEST_TIMEOUT=10s",
	}, common...), "ip", "netns", "exec", clientNS.name, filepath.Join(binDir, "cmd-nsc"))

	// NSM's NSC gets nsm-1 through nsmfwd.
	deadline := time.Now().Add(90 * time.Second)
	for !slices.Contains(nstest.Links(t, clientNS.path), "nsm-1") {
		if time.Now().After(deadline) {
			t.Fatalf("no nsm-1 in the NSC's namespace after 90 s (links %v)", nstest.Links(t, clientNS.path))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if n, b := len(nstest.Links(t, node.path)), len(w.before.links[node.name]); n != b+2 {
		t.Errorf("node namespace has %d links, want %d: nsmfwd's two node-side ends", n, b+2)
	}
	nseAddr := d.ipv4Of(epNS.name)
	out, err := nstest.Exec(t, clientNS.name, "ping", "-c", "3", "-i", "0.2", "-W", "2", nseAddr.String())
	if err != nil {
		t.Fatalf("NSM's NSC cannot ping NSM's icmp-responder at %s through nsmfwd: %v\n%s", nseAddr, err, out)
	}
	t.Logf("NSC -> icmp-responder %s through nsmfwd:\n%s", nseAddr, strings.TrimSpace(out))
	// The vWire stays: no Close and re-Request behind the NSC's back (a
	// heal loop would give nsm-1 a new ifindex every time).
	first := linkIndex(t, clientNS.name, "nsm-1")
	time.Sleep(3 * time.Second)
	if again := linkIndex(t, clientNS.name, "nsm-1"); again != first {
		t.Fatalf("nsm-1 was re-created within 3 s (ifindex %d, then %d): the connection is being closed and requested again", first, again)
	}
	if out, err := nstest.Exec(t, clientNS.name, "ping", "-c", "5", "-i", "0.2", "-W", "2", nseAddr.String()); err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through nsmfwd after 3 s: %v\n%s", err, out)
	}

	// Kill the NSC: no Close. Its token expires, NSMgr closes the
	// connection downstream and nsmfwd removes the vWire.
	_ = nsc.Process.Signal(syscall.SIGKILL)
	_ = nsc.Wait()
	var now snapshot
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
		if now = w.snapshot(); sameAsBeforeIgnoring(w.before, now, clientNS.name) {
			break
		}
	}
	if !sameAsBeforeIgnoring(w.before, now, clientNS.name) {
		t.Fatalf("after the NSC was killed nsmfwd left:\nlinks before %v\nlinks after  %v\nBPF programs before %v\nafter %v",
			w.before.links, now.links, w.before.progs, now.progs)
	}
}

// linkIndex is the ifindex of the link name in the namespace ns.
func linkIndex(t *testing.T, ns, name string) int {
	t.Helper()
	out, err := nstest.Exec(t, ns, "cat", "/sys/class/net/"+name+"/ifindex")
	if err != nil {
		t.Fatalf("%s in %s: %v %s", name, ns, err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("ifindex of %s: %q", name, out)
	}
	return n
}

// sameAsBeforeIgnoring compares links in every namespace but skip (the
// killed NSC's, where the NSC's own leftovers are not nsmfwd's business
// once its veth end is gone with the vWire) and BPF programs.
func sameAsBeforeIgnoring(before, now snapshot, skip string) bool {
	for k, v := range before.links {
		if k != skip && !slices.Equal(v, now.links[k]) {
			return false
		}
	}
	return !slices.Contains(now.links[skip], "nsm-1") && slices.Equal(before.progs, now.progs)
}

// procWorld runs tier 2's processes.
type procWorld struct {
	t    *testing.T
	dir  string
	name string
}

func (d *procWorld) privateResolvConf(ns string) {
	d.t.Helper()
	dir := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { _ = os.RemoveAll(dir) })
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		data = nil
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), data, 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// buildNSMFwd builds nsmfwd from this checkout (the main module).
func (d *procWorld) buildNSMFwd() string {
	d.t.Helper()
	out := filepath.Join(d.dir, "nsmfwd")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/nsmfwd")
	cmd.Dir = filepath.Join("..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		d.t.Fatalf("go build ./cmd/nsmfwd: %v\n%s", err, b)
	}
	return out
}

// start runs args with env added, logging to DIR/name.log (printed when the
// test fails), and kills it at the end of the test.
func (d *procWorld) start(name string, env []string, args ...string) *exec.Cmd {
	d.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		d.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("start %s: %v", name, err)
	}
	d.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			// The whole group: ip netns exec and nsenter exec, but be sure.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
		_ = logf.Close()
		if dir := os.Getenv("NSM_TIER2_KEEP_LOGS"); dir != "" { // for debugging: every process's whole log
			b, _ := os.ReadFile(logf.Name())
			_ = os.WriteFile(filepath.Join(dir, name+".log"), b, 0o600)
		}
		if d.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			d.t.Logf("--- %s log (tail):\n%s", name, b)
		}
	})
	return cmd
}

func (d *procWorld) waitFile(path string) {
	d.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	d.t.Fatalf("%s did not appear in 30 s", path)
}

func (d *procWorld) waitTCP(port int) {
	d.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.Close()
			return
		}
	}
	d.t.Fatalf("nothing listens on %s after 30 s", addr)
}

// ipv4Of returns the first global IPv4 address in namespace ns (the NSE's
// interface, which NSM's icmp-responder gets through nsmfwd).
func (d *procWorld) ipv4Of(ns string) netip.Addr {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for ; ctx.Err() == nil; time.Sleep(200 * time.Millisecond) {
		out, err := nstest.Exec(d.t, ns, "ip", "-o", "-4", "addr", "show", "scope", "global")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(out) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().Is4() {
				return p.Addr()
			}
		}
	}
	d.t.Fatalf("no IPv4 address in namespace %s", ns)
	return netip.Addr{}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
