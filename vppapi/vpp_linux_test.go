package vppapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.fd.io/govpp/binapi/acl"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/l2"
	"go.fd.io/govpp/binapi/memif"
	"go.fd.io/govpp/binapi/vlib"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xsk"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// These tests drive a real VPP (VPP_BIN, or vpp on PATH; VPP 25.10, the
// release govpp v0.13.0's binapi is for). test/conformance runs the whole
// scenario suite on it; here are what the suite cannot express: a memif
// peer that is itself a VPP, and VPP crashing under the forwarder.

func vppBinary(t testing.TB) string {
	t.Helper()
	nstest.RequireRoot(t)
	bin, err := FindBinary(os.Getenv("VPP_BIN"))
	if err != nil {
		if os.Getenv("VPP_BIN") != "" {
			t.Fatal(err)
		}
		t.Skip(err.Error() + " to run the real-VPP tests (VPP 25.10)")
	}
	return bin
}

// startVPP starts a VPP in the namespace at nsPath, stopped at cleanup.
func startVPP(t testing.TB, bin, nsPath string) *Process {
	t.Helper()
	return startVPPWith(t, bin, nsPath, ProcessOptions{})
}

// startVPPWith is startVPP with more options (Bin, RuntimeDir and NetNS are
// filled in).
func startVPPWith(t testing.TB, bin, nsPath string, o ProcessOptions) *Process {
	t.Helper()
	dir, err := os.MkdirTemp("", "vpp") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o.Bin, o.RuntimeDir, o.NetNS, o.MainCore = bin, dir, nsPath, -1
	p, err := StartProcess(ctx, o)
	if err != nil {
		t.Fatalf("start VPP: %v", err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "vpp.out"))
			if len(out) > 3000 {
				out = out[len(out)-3000:]
			}
			t.Logf("VPP output (%s):\n%s", dir, out)
		}
		_ = os.RemoveAll(dir)
	})
	return p
}

func dialVPP(t testing.TB, p *Process) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Dial(ctx, ConnOptions{Socket: p.APISocket()})
	if err != nil {
		t.Fatalf("dial VPP: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// cli runs a debug CLI command through the binary API.
func cli(t *testing.T, c *Conn, cmd string) string {
	t.Helper()
	var rep vlib.CliInbandReply
	if err := c.Invoke(context.Background(), &vlib.CliInband{Cmd: cmd}, &rep); err != nil {
		t.Fatalf("vpp cli %q: %v", cmd, err)
	}
	return rep.Reply
}

var received = regexp.MustCompile(`(\d+) sent, (\d+) received`)

// vppPing pings to from the VPP at c until 3 replies come back in one
// round (the first round may lose one to ARP), for up to 20 s.
func vppPing(t *testing.T, c *Conn, to string) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		out = cli(t, c, "ping "+to+" repeat 5 interval 0.1")
		if m := received.FindStringSubmatch(out); m != nil {
			if n, _ := strconv.Atoi(m[2]); n >= 3 {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("VPP ping %s: %s", to, out)
}

func nsPing(t *testing.T, ns, to string) {
	t.Helper()
	var out string
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		if out, err = nstest.Exec(t, ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", to); err == nil {
			return
		}
	}
	t.Fatalf("ping %s from %s: %v\n%s", to, ns, err, out)
}

// pingNoDup pings to from ns and fails on a duplicate reply: the host and
// a VPP that shares its uplink address would both answer without the
// uplink's ACL.
func pingNoDup(t *testing.T, ns, to string) {
	t.Helper()
	nsPing(t, ns, to)
	out, err := nstest.Exec(t, ns, "ping", "-c", "4", "-i", "0.2", "-W", "1", to)
	if err != nil || strings.Contains(out, "DUP!") {
		t.Fatalf("ping %s from %s: want one reply each, from the host only: %v\n%s", to, ns, err, out)
	}
}

// pinholes lists the UDP flows the uplink's pinhole ACL of a forwarder
// name lets in, as "src -> dst:port"; ok is false without the ACL.
func pinholes(t *testing.T, c *Conn, name string) (flows []string, ok bool) {
	t.Helper()
	all, err := Dump[*acl.ACLDetails](context.Background(), c, &acl.ACLDump{ACLIndex: ^uint32(0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range all {
		if a.Tag != pinholeTag(name) {
			continue
		}
		ok = true
		for _, r := range a.R {
			if r.Proto == ip_types.IP_API_PROTO_UDP {
				flows = append(flows, fmt.Sprintf("%s -> %s:%d", fromVPPPrefix(r.SrcPrefix).Addr(), fromVPPPrefix(r.DstPrefix).Addr(), r.DstportOrIcmpcodeFirst))
			}
		}
	}
	return flows, ok
}

func memifTestConn(id string, payload forwarder.Payload, epPath string) *forwarder.Conn {
	return &forwarder.Conn{ID: id, Payload: payload, MTU: 1400,
		Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: MechanismMemif},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.70.0.1/24")}}},
		Endpoint: forwarder.Side{
			Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + epPath, forwarder.ParamIfName: "nsm0"}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.70.0.2/24")}},
		},
	}
}

// A client that is itself a VPP (a CNF) attaches to the MEMIF side as
// slave on the socket the forwarder announced, and pings an endpoint
// namespace through the forwarder's VPP, in both payload modes.
func TestMemifPeerVPP(t *testing.T) {
	bin := vppBinary(t)
	_, nodePath := nstest.New(t)
	_, cnfPath := nstest.New(t)
	fwdVPP := dialVPP(t, startVPP(t, bin, nodePath))
	cnf := dialVPP(t, startVPP(t, bin, cnfPath))
	memifDir, err := os.MkdirTemp("", "memif")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(memifDir) })
	d, err := New(context.Background(), Options{Name: "memif-test", Conn: fwdVPP, HostNetNS: nodePath, MemifDir: memifDir, RxMode: RxModeInterrupt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })

	for i, tc := range []struct {
		payload  forwarder.Payload
		abstract bool
	}{{forwarder.PayloadEthernet, false}, {forwarder.PayloadIP, false}, {forwarder.PayloadEthernet, true}} {
		payload := tc.payload
		name := string(payload)
		if tc.abstract {
			name += "/abstract"
		}
		t.Run(name, func(t *testing.T) {
			epName, epPath := nstest.New(t)
			c := memifTestConn("memif-"+strconv.Itoa(i), payload, epPath)
			if tc.abstract {
				// NSM's abstract-socket form: the mechanism names the
				// workload's namespace, the socket is made in it.
				c.Client.Mechanism.Params = map[string]string{forwarder.ParamNetNSURL: "file://" + cnfPath}
			}
			if err := d.Connect(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			sock := c.Client.Mechanism.Param(ParamSocketFile)
			if tc.abstract {
				if strings.Contains(sock, "/") || !strings.HasPrefix(sock, "nsmfwd-") {
					t.Fatalf("socketfile %q: want an abstract socket's name", sock)
				}
				// The socket is in the workload's namespace, not the node's.
				if out, _ := nstest.Exec(t, "", "cat", "/proc/net/unix"); strings.Contains(out, "@"+sock) {
					t.Fatalf("abstract socket %s in the node's namespace", sock)
				}
				sock = "abstract:" + sock
			} else if _, err := os.Stat(filepath.Dir(sock)); err != nil {
				t.Fatalf("memif socket dir: %v", err)
			}
			// Not connected yet: the workload connects after the Request
			// returns, so this is no death.
			for range 3 {
				if ok, why, err := d.Alive(context.Background(), c, forwarder.SideClient); !ok || err != nil {
					t.Fatalf("memif side before its peer connected: dead (%s, %v)", why, err)
				}
				time.Sleep(memifGrace)
			}
			// The CNF side: memif slave on the announced socket.
			id := strconv.Itoa(i + 1)
			mode := ""
			if payload == forwarder.PayloadIP {
				mode = " mode ip"
			}
			ifName := "memif" + id + "/0"
			cli(t, cnf, "create memif socket id "+id+" filename "+sock)
			cli(t, cnf, "create interface memif id 0 socket-id "+id+" slave"+mode)
			cli(t, cnf, "set interface state "+ifName+" up")
			cli(t, cnf, "set interface ip address "+ifName+" 10.70.0.1/24")
			vppPing(t, cnf, "10.70.0.2")
			nsPing(t, epName, "10.70.0.1")
			if tc.abstract {
				if out, _ := nstest.Exec(t, filepath.Base(cnfPath), "cat", "/proc/net/unix"); !strings.Contains(out, "@"+strings.TrimPrefix(sock, "abstract:")) {
					t.Fatalf("no abstract socket %s in the workload's namespace:\n%s", sock, out)
				}
			}

			// The CNF goes away: its memif disconnects, and after the
			// grace the side counts as dead (never before it connected).
			if ok, why, err := d.Alive(context.Background(), c, forwarder.SideClient); !ok || err != nil {
				t.Fatalf("connected memif side not alive: %s %v", why, err)
			}
			// Seen connected, the memif got its queues and was put in
			// interrupt mode (VPP makes them polled).
			if pl := cli(t, fwdVPP, "show interface rx-placement"); !regexp.MustCompile(`memif\d+/0 queue 0 \(interrupt\)`).MatchString(pl) {
				t.Fatalf("memif not in interrupt mode:\n%s", pl)
			}
			vppPing(t, cnf, "10.70.0.2")
			cli(t, cnf, "delete interface memif "+ifName)
			cli(t, cnf, "delete memif socket id "+id)
			t.Logf("memif peer gone: dead after %v", waitMemifDead(t, d, c))
			if err := d.Disconnect(context.Background(), c.ID); err != nil {
				t.Fatal(err)
			}
			if tc.abstract {
				cnfName := filepath.Base(cnfPath)
				if out, _ := nstest.Exec(t, cnfName, "cat", "/proc/net/unix"); strings.Contains(out, "@"+strings.TrimPrefix(sock, "abstract:")) {
					t.Fatalf("abstract socket left in the workload's namespace after Disconnect")
				}
				socks, err := Dump[*memif.MemifSocketFilenameDetails](context.Background(), fwdVPP, &memif.MemifSocketFilenameDump{})
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range socks {
					if strings.HasPrefix(x.SocketFilename, sock) {
						t.Fatalf("VPP keeps the socket %s after Disconnect", x.SocketFilename)
					}
				}
			} else if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
				t.Fatalf("memif socket dir left after Disconnect: %v", err)
			}
			if left := taggedIfs(t, fwdVPP, "memif-test"); len(left) != 0 {
				t.Fatalf("VPP interfaces left after Disconnect: %v", left)
			}
			if links := nstest.Links(t, epPath); len(links) != 1 {
				t.Fatalf("endpoint namespace links after Disconnect: %v", links)
			}
		})
	}
}

// A forwarder that restarts while a memif's peer is connected, and whose
// peer then leaves, still sees the death: VPP's counters say the memif had
// a peer, which the new process never saw connected.
func TestMemifDeathAfterRestart(t *testing.T) {
	bin := vppBinary(t)
	_, nodePath := nstest.New(t)
	_, cnfPath := nstest.New(t)
	p := startVPP(t, bin, nodePath)
	fwdVPP := dialVPP(t, p)
	cnf := dialVPP(t, startVPP(t, bin, cnfPath))
	stats := NewStats(p.StatsSocket())
	t.Cleanup(stats.Close)
	memifDir := t.TempDir()
	opts := Options{Name: "memif-restart", Conn: fwdVPP, HostNetNS: nodePath, MemifDir: memifDir, Stats: stats}
	d, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	epName, epPath := nstest.New(t)
	c := memifTestConn("memif-restart", forwarder.PayloadEthernet, epPath)
	if err := d.Connect(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	sock := c.Client.Mechanism.Param(ParamSocketFile)
	cli(t, cnf, "create memif socket id 1 filename "+sock)
	cli(t, cnf, "create interface memif id 0 socket-id 1 slave")
	cli(t, cnf, "set interface state memif1/0 up")
	cli(t, cnf, "set interface ip address memif1/0 10.70.0.1/24")
	vppPing(t, cnf, "10.70.0.2")
	nsPing(t, epName, "10.70.0.1")
	_ = d.Close() // the forwarder goes; VPP and the vWire stay

	d2, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d2.Close() })
	if res, err := d2.Reconcile(context.Background(), []*forwarder.Conn{c.Clone()}); err != nil || len(res.Failed) > 0 {
		t.Fatalf("reconcile: %+v %v", res, err)
	}
	cli(t, cnf, "delete interface memif memif1/0")
	t.Logf("memif peer gone after a forwarder restart: dead after %v", waitMemifDead(t, d2, c))
	if err := d2.Disconnect(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
}

// waitMemifDead polls the client side's Alive from the moment its memif
// peer left until it is dead (for the right reason), and returns how long
// that took; at most 5 s.
func waitMemifDead(t *testing.T, d *Dataplane, c *forwarder.Conn) time.Duration {
	t.Helper()
	gone := time.Now()
	for {
		ok, why, err := d.Alive(context.Background(), c, forwarder.SideClient)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			if why != forwarder.ReasonClientInterfaceGone {
				t.Fatalf("reason %q", why)
			}
			return time.Since(gone).Round(time.Millisecond)
		}
		if time.Since(gone) > 5*time.Second {
			t.Fatal("memif side still alive 5 s after its peer left")
		}
		time.Sleep(memifCheckInterval)
	}
}

func taggedIfs(t *testing.T, c *Conn, name string) []string {
	t.Helper()
	found, err := dumpTagged(context.Background(), c, tagPrefix(name))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for tag := range found {
		out = append(out, tag)
	}
	return out
}

// SIGKILL of the supervised VPP: the supervisor starts a new one and
// replays the live connection, and traffic flows again over the same
// namespace interfaces.
func TestCrashReplay(t *testing.T) {
	bin := vppBinary(t)
	// A crash (SIGKILL), and a VPP that is alive but no longer answers
	// (SIGSTOP stands in for a stalled main loop): either way the
	// supervisor ends up with a new VPP and replays the connection.
	t.Run("killed", func(t *testing.T) { testReplay(t, bin, func(p *Process) { p.Kill() }) })
	t.Run("hung", func(t *testing.T) {
		testReplay(t, bin, func(p *Process) {
			if err := unix.Kill(p.Pid(), unix.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		})
	})
}

func testReplay(t *testing.T, bin string, stop func(*Process)) {
	_, nodePath := nstest.New(t)
	cName, cPath := nstest.New(t)
	eName, ePath := nstest.New(t)
	p := startVPP(t, bin, nodePath)
	dial := func(ctx context.Context) (*Conn, error) { return Dial(ctx, ConnOptions{Socket: p.APISocket()}) }
	vc := dialVPP(t, p)
	d, err := New(context.Background(), Options{Name: "crash-test", Conn: vc, HostNetNS: nodePath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Supervise(ctx, SuperviseOptions{Process: p, Dial: dial, Dataplane: d, Interval: 200 * time.Millisecond})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if c := d.Conn(); c != nil && c != vc {
			c.Close()
		}
	})

	c := kernelConn("crash-1", forwarder.PayloadEthernet, cPath, ePath, "10.71.0")
	c.MTU = 1400
	if err := d.Connect(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	nsPing(t, cName, "10.71.0.2")
	tcpAcross(t, cName, eName, "10.71.0.2")
	clientIf := nstest.Links(t, cPath)

	pid := p.Pid()
	stop(p)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if np := p.Pid(); np != pid && np > 0 {
			if vc2 := d.Conn(); vc2 != nil && len(taggedIfs(t, vc2, "crash-test")) == 2 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p.Pid() == pid {
		t.Fatal("VPP was not restarted")
	}
	nsPing(t, cName, "10.71.0.2")
	nsPing(t, eName, "10.71.0.1")
	if got := nstest.Links(t, cPath); strings.Join(got, ",") != strings.Join(clientIf, ",") {
		t.Fatalf("client interfaces changed across the VPP crash: %v -> %v", clientIf, got)
	}
	if err := d.Disconnect(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	if left := taggedIfs(t, d.Conn(), "crash-test"); len(left) != 0 {
		t.Fatalf("VPP interfaces left: %v", left)
	}
	if links := nstest.Links(t, nodePath); len(links) != 1 {
		t.Fatalf("node namespace links left: %v", links)
	}
}

// The uplink is attached with the host's MAC, MTU, addresses and routes;
// VPP reaches the next hop through it; a second attach (a restart) adopts
// it, and Reconcile keeps it.
func TestUplink(t *testing.T) {
	bin := vppBinary(t)
	for _, mode := range []string{UplinkAFPacket, UplinkAFXDP} {
		t.Run(mode, func(t *testing.T) {
			nodeName, nodePath := nstest.New(t)
			farName, _ := nstest.New(t)
			for _, args := range [][]string{
				{"ip", "link", "add", "up0", "mtu", "1450", "type", "veth", "peer", "name", "far0", "netns", farName},
				{"ip", "addr", "add", "192.168.50.1/24", "dev", "up0"},
				{"ip", "-6", "addr", "add", "fd50::1/64", "dev", "up0", "nodad"},
				{"ip", "link", "set", "up0", "up"},
				{"ip", "route", "add", "default", "via", "192.168.50.2"},
				{"ip", "route", "add", "10.200.0.0/16", "via", "192.168.50.2"},
			} {
				if out, err := nstest.Exec(t, nodeName, args...); err != nil {
					t.Fatalf("%v: %v %s", args, err, out)
				}
			}
			for _, args := range [][]string{
				{"ip", "link", "set", "far0", "mtu", "1450"},
				{"ip", "addr", "add", "192.168.50.2/24", "dev", "far0"},
				{"ip", "link", "set", "far0", "up"},
			} {
				if out, err := nstest.Exec(t, farName, args...); err != nil {
					t.Fatalf("%v: %v %s", args, err, out)
				}
			}
			vc := dialVPP(t, startVPP(t, bin, nodePath))
			opts := UplinkOptions{Name: "uplink-test", Mode: mode, HostNetNS: nodePath, XDPDir: t.TempDir()}
			up, err := AttachUplink(context.Background(), vc, opts)
			if err != nil {
				t.Fatal(err)
			}
			if up.HostIf != "up0" || up.MTU != 1450 {
				t.Fatalf("uplink %+v: want up0 (the default route's) with MTU 1450", up)
			}
			for _, want := range []string{"192.168.50.1/24", "fd50::1/64"} {
				if !slicesContainsString(up.Addrs, want) {
					t.Errorf("addresses %v lack %s", up.Addrs, want)
				}
			}
			for _, want := range []string{"0.0.0.0/0 via 192.168.50.2", "10.200.0.0/16 via 192.168.50.2"} {
				if !slices.Contains(up.Routes, want) {
					t.Errorf("routes %v lack %s", up.Routes, want)
				}
			}
			if fib := cli(t, vc, "show ip fib 10.200.0.0/16"); !strings.Contains(fib, "192.168.50.2") {
				t.Fatalf("VPP FIB lacks the copied route:\n%s", fib)
			}
			if mode == UplinkAFPacket {
				vppPing(t, vc, "192.168.50.2")
			} else {
				// nsmfwd's pinhole program: the host keeps the uplink
				// (TCP to it works; VPP's default program takes every
				// frame) and VPP got the gateway's MAC from the host.
				if out, err := nstest.Exec(t, nodeName, "ip", "-j", "link", "show", "up0"); err != nil || !strings.Contains(out, "xdp") {
					t.Fatalf("no XDP program on the uplink: %v %s", err, out)
				}
				tcpAcross(t, farName, nodeName, "192.168.50.1")
				if nb := cli(t, vc, "show ip neighbors"); !strings.Contains(nb, "192.168.50.2") || !strings.Contains(nb, "S") {
					t.Fatalf("VPP lacks the gateway's neighbour entry:\n%s", nb)
				}
			}
			if !up.Protected {
				t.Fatal("uplink attached without its pinhole ACL")
			}
			if flows, ok := pinholes(t, vc, "uplink-test"); !ok || len(flows) != 0 {
				t.Fatalf("pinholes %v (ACL present: %v): want the ACL, with no flow open", flows, ok)
			}
			pingNoDup(t, farName, "192.168.50.1")

			again, err := AttachUplink(context.Background(), vc, opts)
			if err != nil {
				t.Fatal(err)
			}
			if again.Index != up.Index {
				t.Fatalf("second attach made a new interface (%d, was %d) instead of adopting", again.Index, up.Index)
			}
			d, err := New(context.Background(), Options{Name: "uplink-test", Conn: vc, HostNetNS: nodePath})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if _, err := d.Reconcile(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			if tags := taggedIfs(t, vc, "uplink-test"); len(tags) != 1 {
				t.Fatalf("after Reconcile: %v, want the uplink kept", tags)
			}
		})
	}
}

// AF_XDP interfaces beyond what VPP's buffer pool can feed are refused
// with ResourceExhausted, and the refused connection leaves nothing.
func TestAFXDPBufferBudget(t *testing.T) {
	bin := vppBinary(t)
	_, nodePath := nstest.New(t)
	vc := dialVPP(t, startVPP(t, bin, nodePath))
	// Room for exactly two interfaces of the default queue (256 + 128).
	d, err := New(context.Background(), Options{Name: "xdpbudget", Conn: vc, HostNetNS: nodePath, KernelMode: ModeAFXDP, Buffers: bufferReserve + 2*384})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	_, c1 := nstest.New(t)
	_, e1 := nstest.New(t)
	if err := d.Connect(context.Background(), kernelConn("xb-1", forwarder.PayloadEthernet, c1, e1, "10.73.0")); err != nil {
		t.Fatal(err)
	}
	_, c2 := nstest.New(t)
	_, e2 := nstest.New(t)
	err = d.Connect(context.Background(), kernelConn("xb-2", forwarder.PayloadEthernet, c2, e2, "10.73.1"))
	var fe *forwarder.Error
	if !errors.As(err, &fe) || fe.Code != forwarder.CodeResourceExhausted || !strings.Contains(err.Error(), "NSM_VPP_BUFFERS") {
		t.Fatalf("second connection: %v, want ResourceExhausted naming NSM_VPP_BUFFERS", err)
	}
	if tags := taggedIfs(t, vc, "xdpbudget"); len(tags) != 2 {
		t.Fatalf("VPP interfaces %v: want the first connection's two only", tags)
	}
	for _, p := range []string{c2, e2} {
		if links := nstest.Links(t, p); len(links) != 1 {
			t.Fatalf("links left by the refused connection: %v", links)
		}
	}
	if err := d.Disconnect(context.Background(), "xb-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Connect(context.Background(), kernelConn("xb-2", forwarder.PayloadEthernet, c2, e2, "10.73.1")); err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	if err := d.Disconnect(context.Background(), "xb-2"); err != nil {
		t.Fatal(err)
	}
	if links := nstest.Links(t, nodePath); len(links) != 1 {
		t.Fatalf("node namespace links left: %v", links)
	}
}

func slicesContainsString(ps []netip.Prefix, s string) bool {
	for _, p := range ps {
		if p.String() == s {
			return true
		}
	}
	return false
}

// Many connections on one VPP, built one after the other: every one is
// built and removed. Built concurrently (4 at a time is enough), VPP 25.10
// stops answering its API after some tens of af_packet interfaces, its
// main loop spinning on readable af_packet descriptors; that is open in
// issue 3, and the conformance suite skips its concurrent scenarios on
// VPP until it is solved.
func TestManyConnections(t *testing.T) {
	bin := vppBinary(t)
	_, nodePath := nstest.New(t)
	p := startVPP(t, bin, nodePath)
	vc := dialVPP(t, p)
	d, err := New(context.Background(), Options{Name: "many-test", Conn: vc, HostNetNS: nodePath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	n, par := 60, 1
	if v, err := strconv.Atoi(os.Getenv("NSMFWD_TEST_VPP_PARALLEL")); err == nil && v > 0 {
		par = v
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, par)
	errs := make(chan error, n)
	durs := make(chan time.Duration, n)
	for i := range n {
		// Without IPv6 in the workloads: their neighbour discovery and MLD
		// on 120 fresh interfaces is what drives VPP 25.10 into its
		// af_packet livelock (16 readable sockets at once, see
		// docs/operations.md), which this test is not about.
		cName, cPath := nstest.New(t)
		eName, ePath := nstest.New(t)
		for _, ns := range []string{cName, eName} {
			if out, err := nstest.Exec(t, ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		c := &forwarder.Conn{ID: fmt.Sprintf("many-%d", i), Payload: forwarder.PayloadEthernet, MTU: 1400,
			Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + cPath, forwarder.ParamIfName: "nsm0"}}},
			Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + ePath, forwarder.ParamIfName: "nsm0"}}},
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			t0 := time.Now()
			errs <- d.Connect(context.Background(), c)
			durs <- time.Since(t0)
		})
	}
	wg.Wait()
	close(errs)
	close(durs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var ds []time.Duration
	for dd := range durs {
		ds = append(ds, dd)
	}
	slices.Sort(ds)
	t.Logf("%d connects, %d at a time: p50 %v, max %v", n, par, ds[len(ds)/2], ds[len(ds)-1])
	if left := taggedIfs(t, vc, "many-test"); len(left) != 2*n {
		t.Fatalf("%d tagged interfaces, want %d", len(left), 2*n)
	}
	for i := range n {
		if err := d.Disconnect(context.Background(), fmt.Sprintf("many-%d", i)); err != nil {
			t.Error(err)
		}
	}
	if left := taggedIfs(t, vc, "many-test"); len(left) != 0 {
		t.Fatalf("left after Disconnect: %v", left)
	}
}

// Two nodes, each a namespace with its own VPP whose uplink (a veth
// between the nodes, 192.0.2.1 and .2) is attached by af_packet. A client
// on node A reaches an endpoint on node B through a tunnel between the two
// VPPs, built the way two forwarders do: B serves A's offer and answers
// with its end, A builds its half from the answer. VXLAN carries an
// ETHERNET payload, WireGuard an IP one.
func TestTunnelsAcrossNodes(t *testing.T) {
	bin := vppBinary(t)
	for _, tc := range []struct {
		mech    string
		payload forwarder.Payload
		mtu     uint32
		uplink  string
	}{
		{forwarder.MechanismVXLAN, forwarder.PayloadEthernet, 1450, UplinkAFPacket},
		{forwarder.MechanismWireGuard, forwarder.PayloadIP, 1420, UplinkAFPacket},
		{forwarder.MechanismVXLAN, forwarder.PayloadEthernet, 1450, UplinkAFXDP},
	} {
		t.Run(tc.mech+"/"+tc.uplink, func(t *testing.T) { testTunnel(t, bin, tc.mech, tc.payload, tc.mtu, tc.uplink) })
	}
}

// xdpFlows lists the flows the pinhole XDP program of n's AF_XDP uplink
// lets into VPP.
func xdpFlows(t *testing.T, n vppNode, name string) []string {
	t.Helper()
	found, err := dumpTagged(context.Background(), n.vc, uplinkTag(name))
	v, ok := found[uplinkTag(name)]
	if err != nil || !ok {
		t.Fatalf("uplink of %s: %v", name, err)
	}
	x, err := openXDPUplink(n.d.hostNS, n.d.host, v)
	if err != nil || x == nil {
		t.Fatalf("no pinhole XDP program on %s's uplink: %v", name, err)
	}
	fs, err := xsk.Flows(x.progID)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s -> :%d", f.Remote, f.Port))
	}
	return out
}

func testTunnel(t *testing.T, bin, mech string, payload forwarder.Payload, wantMTU uint32, uplink string) {
	aName, aPath := nstest.New(t)
	bName, bPath := nstest.New(t)
	if out, err := nstest.Exec(t, aName, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", bName); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	type node = vppNode
	mk := func(ns, path, ip string) node {
		if out, err := nstest.Exec(t, ns, "ip", "addr", "add", ip+"/24", "dev", "up0"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		n := startNodeUplink(t, bin, ns, path, "up0", uplink, Options{Name: "tn-" + ns, TunnelIP: netip.MustParseAddr(ip)})
		if !slices.Contains(n.d.Mechanisms(forwarder.SideClient), mech) {
			t.Fatalf("%s not offered: %v", mech, n.d.Mechanisms(forwarder.SideClient))
		}
		return n
	}
	a, b := mk(aName, aPath, "192.0.2.1"), mk(bName, bPath, "192.0.2.2")
	cName, cPath := nstest.New(t)
	_, ePath := nstest.New(t)
	base := kernelConn("tn-1", payload, cPath, ePath, "10.72.0")
	offer, ok := a.d.Offer(mech, payload)
	if !ok {
		t.Fatalf("%s not offered for %s", mech, payload)
	}
	cb := base.Clone()
	cb.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: mech, Params: offer}
	if err := b.d.Connect(context.Background(), cb); err != nil {
		t.Fatalf("node B: %v", err)
	}
	m := cb.Client.Mechanism.Params
	if m[forwarder.ParamDstIP] != "192.0.2.2" || m[forwarder.ParamMTU] != strconv.Itoa(int(wantMTU)) || cb.MTU != wantMTU {
		t.Fatalf("B's answer %v (MTU %d): want dst_ip 192.0.2.2, MTU %d", m, cb.MTU, wantMTU)
	}
	if mech == forwarder.MechanismVXLAN {
		if vni, err := forwarder.ParseVNI(m[forwarder.ParamVNI]); err != nil || vni%2 != 0 {
			t.Fatalf("VNI %q: want an even one (the client's end sorts first)", m[forwarder.ParamVNI])
		}
	}
	ca := base.Clone()
	ca.Endpoint.Mechanism = cb.Client.Mechanism
	ca.MTU = cb.MTU
	if err := a.d.Connect(context.Background(), ca); err != nil {
		t.Fatalf("node A: %v", err)
	}
	nsPing(t, cName, "10.72.0.2")
	port := "4789"
	if mech == forwarder.MechanismWireGuard {
		port = "51820"
	}
	for _, n := range []struct {
		nd       node
		name     string
		from, to string
	}{{a, aName, "192.0.2.2", "192.0.2.1"}, {b, bName, "192.0.2.1", "192.0.2.2"}} {
		want := []string{n.from + " -> " + n.to + ":" + port}
		if flows, _ := pinholes(t, n.nd.vc, "tn-"+n.name); !slices.Equal(flows, want) {
			t.Fatalf("pinholes on %s: %v, want %v", n.name, flows, want)
		}
		if uplink == UplinkAFXDP {
			if flows := xdpFlows(t, n.nd, "tn-"+n.name); !slices.Equal(flows, []string{n.from + " -> :" + port}) {
				t.Fatalf("XDP pinholes on %s: %v", n.name, flows)
			}
		}
	}
	pingNoDup(t, aName, "192.0.2.2")
	// A refresh on both keeps the tunnels.
	before := sorted(taggedIfs(t, b.vc, "tn-"+bName))
	if err := b.d.Connect(context.Background(), cb.Clone()); err != nil {
		t.Fatal(err)
	}
	if err := a.d.Connect(context.Background(), ca.Clone()); err != nil {
		t.Fatal(err)
	}
	if after := sorted(taggedIfs(t, b.vc, "tn-"+bName)); !slices.Equal(after, before) {
		t.Fatalf("refresh changed B's interfaces: %v -> %v", before, after)
	}
	nsPing(t, cName, "10.72.0.2")
	// A's half goes by Disconnect; B's by a Reconcile that wants nothing,
	// as after a restart, which deletes by what VPP's dump says.
	for i, n := range []struct {
		nd   node
		name string
		path string
	}{{a, aName, aPath}, {b, bName, bPath}} {
		if i == 0 {
			if err := n.nd.d.Disconnect(context.Background(), "tn-1"); err != nil {
				t.Fatal(err)
			}
		} else {
			fresh, err := New(context.Background(), Options{Name: "tn-" + n.name, Conn: n.nd.vc, HostNetNS: n.path, TunnelIP: netip.MustParseAddr("192.0.2.2")})
			if err != nil {
				t.Fatal(err)
			}
			res, err := fresh.Reconcile(context.Background(), nil)
			_ = fresh.Close()
			if err != nil || len(res.Removed) == 0 {
				t.Fatalf("reconcile: %+v, %v", res, err)
			}
		}
		if left := taggedIfs(t, n.nd.vc, "tn-"+n.name); len(left) != 1 { // the uplink
			t.Fatalf("VPP interfaces left on %s: %v", n.name, left)
		}
		if flows, ok := pinholes(t, n.nd.vc, "tn-"+n.name); !ok || len(flows) != 0 {
			t.Fatalf("pinholes left on %s: %v (ACL present: %v)", n.name, flows, ok)
		}
		if uplink == UplinkAFXDP {
			if flows := xdpFlows(t, n.nd, "tn-"+n.name); len(flows) != 0 {
				t.Fatalf("XDP pinholes left on %s: %v", n.name, flows)
			}
		}
		if got := nstest.Links(t, n.path); !slices.Equal(got, []string{"lo", "up0"}) {
			t.Fatalf("links left on %s: %v", n.name, got)
		}
	}
}

// A node and a "switch", each a namespace with its own VPP whose phys0
// (the veth between them) is attached by af_packet and is the VLAN device
// for via=gw1. On the switch, gateways sit on VLANs 100 and 200; on the
// node, two clients join VLAN 100 and one VLAN 200. Each client reaches
// its VLAN's gateway only, and the two VLAN 100 clients reach each other
// through the node's bridge domain.
func TestVLANDomains(t *testing.T) {
	bin := vppBinary(t)
	nName, nPath := nstest.New(t)
	sName, sPath := nstest.New(t)
	if out, err := nstest.Exec(t, nName, "ip", "link", "add", "phys0", "type", "veth", "peer", "name", "phys0", "netns", sName); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	type node = vppNode
	mk := func(ns, path string) node {
		return startNode(t, bin, ns, path, "phys0", Options{Name: "vl-" + ns, VLANDevices: map[string]string{"gw1": "phys0"}})
	}
	n, s := mk(nName, nPath), mk(sName, sPath)
	conn := func(d *Dataplane, id, addr, vid string) (*forwarder.Conn, string) {
		name, path := nstest.New(t)
		c := &forwarder.Conn{ID: id, Payload: forwarder.PayloadEthernet, Labels: map[string]string{forwarder.ViaLabel: "gw1"},
			Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + path, forwarder.ParamIfName: "nsm0"}},
				IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}}},
			Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVLAN, Params: map[string]string{forwarder.ParamVLANID: vid}}},
		}
		if err := d.Connect(context.Background(), c); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		return c, name
	}
	conn(s.d, "gw-100", "10.73.0.100/24", "100")
	conn(s.d, "gw-200", "10.73.0.200/24", "200")
	c1, n1 := conn(n.d, "vl-1", "10.73.0.1/24", "100")
	_, n2 := conn(n.d, "vl-2", "10.73.0.2/24", "100")
	_, n3 := conn(n.d, "vl-3", "10.73.0.3/24", "200")
	if c1.MTU != 1500 {
		t.Fatalf("MTU %d, want phys0's 1500", c1.MTU)
	}
	nsPing(t, n1, "10.73.0.100")
	nsPing(t, n2, "10.73.0.100")
	nsPing(t, n1, "10.73.0.2")
	nsPing(t, n3, "10.73.0.200")
	if out, err := nstest.Exec(t, n3, "ping", "-c", "1", "-W", "1", "10.73.0.100"); err == nil {
		t.Fatalf("VLAN 200 reached VLAN 100:\n%s", out)
	}
	if err := n.d.Connect(context.Background(), c1.Clone()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	nsPing(t, n1, "10.73.0.100")
	if err := n.d.Disconnect(context.Background(), "vl-1"); err != nil {
		t.Fatal(err)
	}
	nsPing(t, n2, "10.73.0.100")
	for _, x := range []struct {
		nd  node
		ids []string
		ns  string
	}{{n, []string{"vl-2", "vl-3"}, nName}, {s, []string{"gw-100", "gw-200"}, sName}} {
		for _, id := range x.ids {
			if err := x.nd.d.Disconnect(context.Background(), id); err != nil {
				t.Fatal(err)
			}
		}
		if left := taggedIfs(t, x.nd.vc, "vl-"+x.ns); len(left) != 1 { // the uplink
			t.Fatalf("VPP interfaces left on %s: %v", x.ns, left)
		}
		bds, err := Dump[*l2.BridgeDomainDetails](context.Background(), x.nd.vc, &l2.BridgeDomainDump{BdID: ^uint32(0), SwIfIndex: ^interface_types.InterfaceIndex(0)})
		if err != nil || len(bds) != 0 {
			t.Fatalf("bridge domains left on %s: %v %v", x.ns, bds, err)
		}
	}
}

// tcpAcross sends TCP from client to server (namespaces) with iperf3 for a
// second: checksums and segmentation offloads must survive VPP.
func tcpAcross(t *testing.T, client, server, addr string) {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Log("no iperf3 in PATH: TCP through VPP not checked (apt-get install iperf3)")
		return
	}
	srv := exec.Command("ip", "netns", "exec", server, "iperf3", "-s", "-1")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out []byte
	var err error
	for range 20 { // until the server listens
		out, err = exec.Command("timeout", "15", "ip", "netns", "exec", client, "iperf3", "-c", addr, "-t", "1").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(out), "receiver") {
		t.Fatalf("TCP through VPP: %v\n%s", err, out)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// TCP crosses VPP in every kernel mode: af_packet carries offload state in
// its virtio-net header, AF_XDP needs the workloads to finish their own
// checksums.
func TestTCPAcrossKernelModes(t *testing.T) {
	bin := vppBinary(t)
	for _, mode := range []string{ModeAFPacket, ModeAFXDP} {
		t.Run(mode, func(t *testing.T) {
			_, nodePath := nstest.New(t)
			cName, cPath := nstest.New(t)
			eName, ePath := nstest.New(t)
			vc := dialVPP(t, startVPP(t, bin, nodePath))
			// nsmfwd's own XDP program: VPP unloads it with the interface.
			d, err := New(context.Background(), Options{Name: "tcp-test", Conn: vc, HostNetNS: nodePath, KernelMode: mode, XDPDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = d.Close() })
			progs := len(nstest.BPFProgIDs(t))
			c := kernelConn("tcp-1", forwarder.PayloadEthernet, cPath, ePath, "10.75.0")
			c.MTU = 1500
			if err := d.Connect(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			nsPing(t, cName, "10.75.0.2")
			tcpAcross(t, cName, eName, "10.75.0.2")
			if err := d.Disconnect(context.Background(), c.ID); err != nil {
				t.Fatal(err)
			}
			if now := len(nstest.BPFProgIDs(t)); now != progs {
				t.Fatalf("BPF programs: %d before the connection, %d after its Close", progs, now)
			}
		})
	}
}

// kernelConn is connection id between the namespaces at cPath and ePath,
// KERNEL on both sides (nsm0), addressed prefix.1/24 and prefix.2/24.
func kernelConn(id string, payload forwarder.Payload, cPath, ePath, prefix string) *forwarder.Conn {
	side := func(path, host string) forwarder.Side {
		return forwarder.Side{
			Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + path, forwarder.ParamIfName: "nsm0"}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(prefix + "." + host + "/24")}},
		}
	}
	return &forwarder.Conn{ID: id, Payload: payload, Client: side(cPath, "1"), Endpoint: side(ePath, "2")}
}

// vppNode is a "node" of a cross-node test: its VPP and dataplane.
type vppNode struct {
	vc *Conn
	d  *Dataplane
}

// startNode brings link (and lo) up in the node namespace ns, starts a VPP
// there with link attached as its uplink by af_packet, and returns it
// with a dataplane made from opts (Conn and HostNetNS filled in).
func startNode(t *testing.T, bin, ns, path, link string, opts Options) vppNode {
	t.Helper()
	return startNodeUplink(t, bin, ns, path, link, UplinkAFPacket, opts)
}

// startNodeUplink is startNode with the uplink attached in mode (AF_XDP
// with nsmfwd's pinhole program).
func startNodeUplink(t *testing.T, bin, ns, path, link, mode string, opts Options) vppNode {
	t.Helper()
	for _, l := range []string{link, "lo"} {
		if out, err := nstest.Exec(t, ns, "ip", "link", "set", l, "up"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	vc := dialVPP(t, startVPP(t, bin, path))
	if _, err := AttachUplink(context.Background(), vc, UplinkOptions{Name: opts.Name, Mode: mode, Interface: link, HostNetNS: path, XDPDir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	opts.Conn, opts.HostNetNS = vc, path
	d, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return vppNode{vc, d}
}
