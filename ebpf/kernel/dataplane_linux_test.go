package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// env is one test's world: a host namespace, a pin directory and a
// dataplane name of its own.
type env struct {
	t        *testing.T
	hostName string
	hostPath string
	pinDir   string
	name     string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	nstest.RequireRoot(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	e := &env{t: t, name: "test-" + hex.EncodeToString(b[:])}
	e.hostName, e.hostPath = nstest.New(t)
	e.pinDir = "/sys/fs/bpf/nsmfwd-test-" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		if err := os.RemoveAll(e.pinDir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return e
}

func (e *env) dataplane(attach string) *Dataplane {
	e.t.Helper()
	d, err := New(context.Background(), Options{Name: e.name, HostNetNS: e.hostPath, PinDir: e.pinDir, Attach: attach})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = d.Close() })
	return d
}

type peerNS struct{ name, path string }

func newPeer(t *testing.T) peerNS {
	n, p := nstest.New(t)
	return peerNS{n, p}
}

// inodeURL names ns by device and inode, as NSM's grpcfd does.
func inodeURL(t *testing.T, path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("inode://%d/%d", st.Dev, st.Ino)
}

func newConn(t *testing.T, id string, payload forwarder.Payload, client, endpoint peerNS) *forwarder.Conn {
	return &forwarder.Conn{
		ID:      id,
		Payload: payload,
		MTU:     1400,
		Client: forwarder.Side{
			Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + client.path,
				forwarder.ParamIfName:   "nsm0",
			}},
			IP: forwarder.IPConfig{
				Addrs: []netip.Prefix{netip.MustParsePrefix("10.60.0.1/32"), netip.MustParsePrefix("fd60::1/128")},
				Routes: []forwarder.Route{
					{Prefix: netip.MustParsePrefix("10.60.0.2/32")},
					{Prefix: netip.MustParsePrefix("fd60::2/128")},
					{Prefix: netip.MustParsePrefix("10.61.0.0/16"), NextHop: netip.MustParseAddr("10.60.0.2")},
				},
			},
		},
		Endpoint: forwarder.Side{
			Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: inodeURL(t, endpoint.path),
			}},
			IP: forwarder.IPConfig{
				Addrs: []netip.Prefix{netip.MustParsePrefix("10.60.0.2/32"), netip.MustParsePrefix("fd60::2/128")},
				Routes: []forwarder.Route{
					{Prefix: netip.MustParsePrefix("10.60.0.0/24")},
					{Prefix: netip.MustParsePrefix("fd60::/64")},
				},
			},
		},
	}
}

func ping(t *testing.T, from peerNS, to string) {
	t.Helper()
	args := []string{"ping", "-c", "2", "-i", "0.2", "-W", "2", to}
	if strings.Contains(to, ":") {
		args = append(args[:1], append([]string{"-6"}, args[1:]...)...)
	}
	if out, err := nstest.Exec(t, from.name, args...); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from.name, err, out)
	}
}

func pingAll(t *testing.T, client, endpoint peerNS, clientV4 string) {
	t.Helper()
	ping(t, client, "10.60.0.2")
	ping(t, client, "fd60::2")
	ping(t, endpoint, clientV4)
	ping(t, endpoint, "fd60::1")
}

func linkIn(t *testing.T, path, name string) netlink.Link {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, path, err)
	}
	return l
}

func addrsOf(t *testing.T, path, name string) []string {
	t.Helper()
	ns, _ := netns.GetFromPath(path)
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	as, err := h.AddrList(linkIn(t, path, name), netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		if !a.IP.IsLinkLocalUnicast() {
			out = append(out, a.IPNet.String())
		}
	}
	slices.Sort(out)
	return out
}

func onlyLo(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if got := nstest.Links(t, p); !slices.Equal(got, []string{"lo"}) {
			t.Errorf("links left in %s: %v", p, got)
		}
	}
}

// leftProgs returns the programs loaded now that were not before. Programs
// are freed after an RCU grace period, so it waits a little for them to go.
func leftProgs(t *testing.T, before []uint32) []uint32 {
	t.Helper()
	var left []uint32
	for range 50 {
		if left = newProgs(before, nstest.BPFProgIDs(t)); len(left) == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return left
}

func newProgs(before, after []uint32) []uint32 {
	var out []uint32
	for _, id := range after {
		if !slices.Contains(before, id) {
			out = append(out, id)
		}
	}
	return out
}

func TestConnectPingRefreshDisconnect(t *testing.T) {
	for _, attach := range []string{"auto", "tcx", "tc"} {
		for _, payload := range []forwarder.Payload{forwarder.PayloadEthernet, forwarder.PayloadIP} {
			t.Run(attach+"/"+string(payload), func(t *testing.T) {
				testLifecycle(t, attach, payload)
			})
		}
	}
}

func testLifecycle(t *testing.T, attach string, payload forwarder.Payload) {
	e := newEnv(t)
	progsBefore := nstest.BPFProgIDs(t)
	client, endpoint := newPeer(t), newPeer(t)
	d := e.dataplane(attach)
	ctx := context.Background()
	if err := d.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	c := newConn(t, "conn-"+attach+"-"+strings.ToLower(string(payload)), payload, client, endpoint)
	if err := d.Connect(ctx, c); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	epName := c.Endpoint.Mechanism.Param(forwarder.ParamIfName)
	if want := vwire.DefaultIfName(e.name, c.ID, forwarder.SideEndpoint); epName != want {
		t.Fatalf("endpoint interface name %q, want %q written back", epName, want)
	}
	pingAll(t, client, endpoint, "10.60.0.1")
	var st forwarder.Stats
	_, err := os.Stat(filepath.Join(connPinDir(e.pinDir, e.name, c.ID), "link_client"))
	if tcx := err == nil; tcx != (attach == "tcx") {
		t.Errorf("attach %s: tcx link pinned = %v", attach, tcx)
	}
	if payload == forwarder.PayloadIP && linkIn(t, client.path, "nsm0").Attrs().RawFlags&unix.IFF_NOARP == 0 {
		t.Error("IP payload: client interface has ARP on")
	}
	if mtu := linkIn(t, client.path, "nsm0").Attrs().MTU; mtu != 1400 {
		t.Errorf("client MTU %d, want 1400", mtu)
	}

	st, err = d.Stats(ctx, c.ID)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.ClientToEndpoint.Packets < 4 || st.EndpointToClient.Packets < 4 || st.ClientToEndpoint.Bytes == 0 {
		t.Errorf("Stats = %+v, want at least 4 packets each way", st)
	}
	if _, err := d.Stats(ctx, "unknown"); forwarder.CodeOf(err) != forwarder.CodeNotFound {
		t.Errorf("Stats(unknown) = %v, want NotFound", err)
	}

	// Refresh: same objects, new client address.
	hostIdx := linkIn(t, e.hostPath, vwire.HostIfName(e.name, c.ID, forwarder.SideClient)).Attrs().Index
	hostLinks := nstest.Links(t, e.hostPath)
	c2 := c.Clone()
	c2.Client.IP.Addrs[0] = netip.MustParsePrefix("10.60.0.3/32")
	if err := d.Connect(ctx, c2); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if err := d.Connect(ctx, c2); err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	if got := linkIn(t, e.hostPath, vwire.HostIfName(e.name, c.ID, forwarder.SideClient)).Attrs().Index; got != hostIdx {
		t.Errorf("refresh recreated the host end: ifindex %d, was %d", got, hostIdx)
	}
	if got := nstest.Links(t, e.hostPath); !slices.Equal(got, hostLinks) {
		t.Errorf("host links after refresh %v, before %v", got, hostLinks)
	}
	if got, want := addrsOf(t, client.path, "nsm0"), []string{"10.60.0.3/32", "fd60::1/128"}; !slices.Equal(got, want) {
		t.Errorf("client addresses after refresh %v, want %v", got, want)
	}
	pingAll(t, client, endpoint, "10.60.0.3")

	if err := d.Disconnect(ctx, c.ID); err != nil {
		t.Fatalf("Disconnect: %v", err)
	}
	if err := d.Disconnect(ctx, c.ID); err != nil {
		t.Fatalf("Disconnect again: %v", err)
	}
	onlyLo(t, e.hostPath, client.path, endpoint.path)
	if left := leftProgs(t, progsBefore); len(left) > 0 {
		t.Errorf("BPF programs left loaded: %v", left)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.pinDir, e.name)); len(ents) > 0 {
		t.Errorf("pins left: %v", ents)
	}
}

func TestCheck(t *testing.T) {
	e := newEnv(t)
	client := newPeer(t)
	d := e.dataplane("auto")
	ctx := context.Background()
	mech := func(url, name string) forwarder.Mechanism {
		return forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{forwarder.ParamNetNSURL: url, forwarder.ParamIfName: name}}
	}
	if _, err := nstest.Exec(t, client.name, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"); err != nil {
		t.Fatal(err)
	}
	field := "connection.mechanism.parameters."
	for _, tc := range []struct {
		name  string
		m     forwarder.Mechanism
		code  forwarder.Code
		field string
	}{
		{"missing file", mech("file:///run/netns/nsmfwd-test-missing", "nsm0"), forwarder.CodeNotFound, field + "inodeURL"},
		{"not a netns", mech("file:///etc/passwd", "nsm0"), forwarder.CodeInvalidArgument, field + "inodeURL"},
		{"mount ns", mech("file:///proc/self/ns/mnt", "nsm0"), forwarder.CodeInvalidArgument, field + "inodeURL"},
		{"dead pid", mech("file:///proc/999999/ns/net", "nsm0"), forwarder.CodeNotFound, field + "inodeURL"},
		{"unknown inode", mech("inode://1/999999", "nsm0"), forwarder.CodeNotFound, field + "inodeURL"},
		{"name too long", mech("file://"+client.path, "a-very-long-interface-name"), forwarder.CodeInvalidArgument, field + "name"},
		{"name taken", mech("file://"+client.path, "taken0"), forwarder.CodeAlreadyExists, field + "name"},
		{"ok", mech("file://"+client.path, "nsm0"), 0, ""},
		{"ok default name", mech(inodeURL(t, client.path), ""), 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := d.Check(ctx, "c1", forwarder.SideClient, tc.m)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("Check = %v", err)
				}
				return
			}
			fe, ok := errors.AsType[*forwarder.Error](err)
			if !ok || fe.Code != tc.code || fe.Field != tc.field {
				t.Fatalf("Check = %#v (%v), want code %v field %q", err, err, tc.code, tc.field)
			}
			if tc.code == forwarder.CodeAlreadyExists && !strings.Contains(err.Error(), "taken0") {
				t.Errorf("message does not name the interface: %v", err)
			}
		})
	}
	err := d.Check(ctx, "c1", forwarder.SideEndpoint, mech("file:///etc/passwd", "x"))
	if fe, ok := errors.AsType[*forwarder.Error](err); !ok || !strings.HasPrefix(fe.Field, "endpoint.") {
		t.Errorf("endpoint side Check = %v, want an endpoint field", err)
	}
	onlyLo(t, e.hostPath)
}

func TestReconcileAfterRestart(t *testing.T) {
	e := newEnv(t)
	progsBefore := nstest.BPFProgIDs(t)
	ctx := context.Background()
	d1 := e.dataplane("auto")
	live := newConn(t, "live", forwarder.PayloadIP, newPeer(t), newPeer(t))
	liveClient := peerNS{name: strings.TrimPrefix(strings.TrimPrefix(live.Client.Mechanism.Params[forwarder.ParamNetNSURL], "file://"), "/run/netns/")}
	liveClient.path = "/run/netns/" + liveClient.name
	orphanC, orphanE := newPeer(t), newPeer(t)
	orphan := newConn(t, "orphan", forwarder.PayloadEthernet, orphanC, orphanE)
	goneC, goneE := newPeer(t), newPeer(t)
	gone := newConn(t, "gone/with:odd id", forwarder.PayloadEthernet, goneC, goneE)
	for _, c := range []*forwarder.Conn{live, orphan, gone} {
		if err := d1.Connect(ctx, c); err != nil {
			t.Fatalf("Connect %s: %v", c.ID, err)
		}
	}
	ping(t, liveClient, "10.60.0.2")
	hostIdx := linkIn(t, e.hostPath, vwire.HostIfName(e.name, live.ID, forwarder.SideClient)).Attrs().Index
	// The process "dies": handles go, the datapath stays.
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	ping(t, liveClient, "10.60.0.2")
	ping(t, orphanC, "10.60.0.2")
	nstest.Delete(t, goneC.name)

	d2 := e.dataplane("auto")
	res, err := d2.Reconcile(ctx, []*forwarder.Conn{live.Clone(), gone.Clone()})
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	if !slices.Equal(res.Adopted, []string{"live"}) || len(res.Rebuilt) != 0 || !slices.Equal(res.Removed, []string{"orphan"}) {
		t.Errorf("Reconcile = %+v, want live adopted and orphan removed", res)
	}
	if res.Failed[gone.ID] == nil || forwarder.CodeOf(res.Failed[gone.ID]) != forwarder.CodeNotFound {
		t.Errorf("Reconcile failed = %v, want %q failed with NotFound", res.Failed, gone.ID)
	}
	if got := linkIn(t, e.hostPath, vwire.HostIfName(e.name, live.ID, forwarder.SideClient)).Attrs().Index; got != hostIdx {
		t.Errorf("adopted host end recreated: ifindex %d, was %d", got, hostIdx)
	}
	ping(t, liveClient, "10.60.0.2")
	onlyLo(t, orphanC.path, orphanE.path, goneE.path)

	// Delete the endpoint pair behind the dataplane's back: rebuilt.
	if _, err := nstest.Exec(t, e.hostName, "ip", "link", "del", vwire.HostIfName(e.name, live.ID, forwarder.SideEndpoint)); err != nil {
		t.Fatal(err)
	}
	res, err = d2.Reconcile(ctx, []*forwarder.Conn{live.Clone()})
	if err != nil || !slices.Equal(res.Rebuilt, []string{"live"}) {
		t.Fatalf("Reconcile after deletion = %+v, %v; want live rebuilt", res, err)
	}
	ping(t, liveClient, "10.60.0.2")

	res, err = d2.Reconcile(ctx, nil)
	if err != nil || !slices.Equal(res.Removed, []string{"live"}) {
		t.Fatalf("Reconcile(nil) = %+v, %v", res, err)
	}
	onlyLo(t, e.hostPath, liveClient.path)
	if ents, _ := os.ReadDir(filepath.Join(e.pinDir, e.name)); len(ents) > 0 {
		t.Errorf("pins left: %v", ents)
	}
	if left := leftProgs(t, progsBefore); len(left) > 0 {
		t.Errorf("BPF programs left loaded: %v", left)
	}
}

func TestConcurrentConnections(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := e.dataplane("auto")
	client, endpoint := newPeer(t), newPeer(t)
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			c := newConn(t, fmt.Sprintf("c%d", i), forwarder.PayloadEthernet, client, endpoint)
			c.Client.Mechanism.Params[forwarder.ParamIfName] = ""
			c.Client.IP = forwarder.IPConfig{}
			c.Endpoint.IP = forwarder.IPConfig{}
			if err := d.Connect(ctx, c); err != nil {
				errs <- fmt.Errorf("connect %s: %w", c.ID, err)
				return
			}
			if err := d.Disconnect(ctx, c.ID); err != nil {
				errs <- fmt.Errorf("disconnect %s: %w", c.ID, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	onlyLo(t, e.hostPath, client.path, endpoint.path)
}

// TestPeerInHostNamespace covers the bpf_redirect fallback: the client's
// interface lives in the host namespace, where bpf_redirect_peer cannot go.
func TestPeerInHostNamespace(t *testing.T) {
	for _, payload := range []forwarder.Payload{forwarder.PayloadEthernet, forwarder.PayloadIP} {
		t.Run(string(payload), func(t *testing.T) {
			e := newEnv(t)
			endpoint := newPeer(t)
			d := e.dataplane("auto")
			ctx := context.Background()
			c := newConn(t, "same-ns", payload, peerNS{e.hostName, e.hostPath}, endpoint)
			if err := d.Connect(ctx, c); err != nil {
				t.Fatalf("Connect: %v", err)
			}
			pingAll(t, peerNS{e.hostName, e.hostPath}, endpoint, "10.60.0.1")
			if err := d.Disconnect(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
			onlyLo(t, e.hostPath, endpoint.path)
		})
	}
}

// TestConnectRollback: a Connect failing on the endpoint side removes the
// client pair it had already created.
func TestConnectRollback(t *testing.T) {
	e := newEnv(t)
	progsBefore := nstest.BPFProgIDs(t)
	client, endpoint := newPeer(t), newPeer(t)
	if _, err := nstest.Exec(t, endpoint.name, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"); err != nil {
		t.Fatal(err)
	}
	d := e.dataplane("auto")
	c := newConn(t, "rollback", forwarder.PayloadIP, client, endpoint)
	c.Endpoint.Mechanism.Params[forwarder.ParamIfName] = "taken0"
	err := d.Connect(context.Background(), c)
	if forwarder.CodeOf(err) != forwarder.CodeAlreadyExists {
		t.Fatalf("Connect = %v, want AlreadyExists", err)
	}
	onlyLo(t, e.hostPath, client.path)
	if ents, _ := os.ReadDir(filepath.Join(e.pinDir, e.name)); len(ents) > 0 {
		t.Errorf("pins left: %v", ents)
	}
	if left := leftProgs(t, progsBefore); len(left) > 0 {
		t.Errorf("BPF programs left loaded: %v", left)
	}
}
