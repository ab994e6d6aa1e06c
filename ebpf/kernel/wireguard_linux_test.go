package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xconnect"
	"github.com/nsmfwd/nsmfwd/forwarder"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
	"github.com/nsmfwd/nsmfwd/internal/wgnl"
)

// requireWireGuard skips t unless it runs as root on a kernel with
// WireGuard.
func requireWireGuard(t *testing.T) {
	t.Helper()
	nstest.RequireRoot(t)
	c, err := wgnl.Open(netns.None())
	if errors.Is(err, wgnl.ErrNotSupported) {
		t.Skip("kernel has no wireguard module; runs in the guest-VM tier: make test-vm")
	}
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// connectWG builds one cross-node WireGuard connection the way two
// forwarders do it: A offers WIREGUARD (its tunnel end, a port, a public
// key), B serves the Request, builds its half and answers, A builds its
// half from the answer.
func (n *twoNodes) connectWG(t *testing.T, id string, client, endpoint peerNS) (ca, cb *forwarder.Conn) {
	t.Helper()
	base := newConn(t, id, forwarder.PayloadIP, client, endpoint)
	base.MTU = 0 // the tunnel sets it
	offer, ok := n.da.Offer(forwarder.MechanismWireGuard, forwarder.PayloadIP)
	if !ok {
		t.Fatal("node A offers no WireGuard")
	}
	cb = base.Clone()
	cb.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismWireGuard, Params: offer}
	if err := n.db.Connect(context.Background(), cb); err != nil {
		t.Fatalf("node B: %v", err)
	}
	ca = base.Clone()
	ca.Endpoint.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismWireGuard, Params: maps.Clone(cb.Client.Mechanism.Params)}
	ca.MTU = cb.MTU
	if err := n.da.Connect(context.Background(), ca); err != nil {
		t.Fatalf("node A: %v", err)
	}
	return ca, cb
}

// wgDevice reads a WireGuard device in the namespace at path.
func wgDevice(t *testing.T, path, name string) *wgnl.Device {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := wgnl.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dev, err := c.Device(linkIn(t, path, name).Attrs().Index)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// linkIndexes maps the names of the links in the namespace at path to
// their ifindexes: a link re-created keeps its name, not its index.
func linkIndexes(t *testing.T, path string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, name := range nstest.Links(t, path) {
		out[name] = linkIn(t, path, name).Attrs().Index
	}
	return out
}

func TestWireGuardAcrossNodes(t *testing.T) {
	requireWireGuard(t)
	for _, attach := range []string{"tc", "tcx"} {
		t.Run(attach, func(t *testing.T) { testWireGuardAcrossNodes(t, attach) })
	}
}

func testWireGuardAcrossNodes(t *testing.T, attach string) {
	ctx := context.Background()
	n := newTwoNodesAttach(t, attach)
	before := nstest.BPFProgIDs(t)
	if !slices.Contains(n.da.Mechanisms(forwarder.SideEndpoint), forwarder.MechanismWireGuard) {
		t.Fatalf("WIREGUARD not among %v", n.da.Mechanisms(forwarder.SideEndpoint))
	}
	if p, ok := n.da.Offer(forwarder.MechanismWireGuard, forwarder.PayloadEthernet); ok || p != nil {
		t.Fatalf("WireGuard offered for ETHERNET payload: %v", p)
	}
	client, endpoint := newPeer(t), newPeer(t)
	ca, cb := n.connectWG(t, "wg-1", client, endpoint)

	// The offer and the answer, as the VPP dataplane makes and reads them.
	offer, answer := ca.Endpoint.Mechanism.Params, cb.Client.Mechanism.Params
	if offer[forwarder.ParamSrcIP] != "192.0.2.1" || offer[forwarder.ParamSrcPort] != "51820" {
		t.Fatalf("A's offer: %v", offer)
	}
	if answer[forwarder.ParamDstIP] != "192.0.2.2" || answer[forwarder.ParamDstPort] != "51820" || answer[forwarder.ParamMTU] != "1420" {
		t.Fatalf("B's answer: %v", answer)
	}
	if cb.MTU != 1420 || ca.MTU != 1420 {
		t.Fatalf("connection MTU %d/%d, want 1420 (uplink 1500 - WireGuard over IPv4 as NSM counts it)", ca.MTU, cb.MTU)
	}
	if mtu := linkIn(t, client.path, "nsm0").Attrs().MTU; mtu != 1420 {
		t.Fatalf("client interface MTU %d, want 1420", mtu)
	}
	wgA := vwire.HostIfName(n.a.name, "wg-1", forwarder.SideEndpoint)
	wgB := vwire.HostIfName(n.b.name, "wg-1", forwarder.SideClient)
	for _, x := range []struct {
		e    *env
		name string
		side forwarder.SideKind
	}{{n.a, wgA, forwarder.SideEndpoint}, {n.b, wgB, forwarder.SideClient}} {
		l := linkIn(t, x.e.hostPath, x.name)
		if l.Type() != "wireguard" || l.Attrs().Alias != vwire.LinkAlias(x.e.name, "wg-1", x.side) {
			t.Fatalf("%s: %s link with alias %q", x.name, l.Type(), l.Attrs().Alias)
		}
	}

	pingAll(t, client, endpoint, "10.60.0.1")
	// A full-size packet crosses the tunnel unfragmented.
	if out, err := nstest.Exec(t, client.name, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1392", "10.60.0.2"); err != nil {
		t.Fatalf("1420-byte ping: %v\n%s", err, out)
	}

	// Kernel to kernel: each device has the other's key as its one peer,
	// at the advertised ends, and they shook hands.
	devA, devB := wgDevice(t, n.a.hostPath, wgA), wgDevice(t, n.b.hostPath, wgB)
	if devA.PublicKey.String() != offer[forwarder.ParamSrcPublicKey] || devB.PublicKey.String() != answer[forwarder.ParamDstPublicKey] {
		t.Fatalf("device keys %s/%s, mechanism %s/%s", devA.PublicKey, devB.PublicKey, offer[forwarder.ParamSrcPublicKey], answer[forwarder.ParamDstPublicKey])
	}
	if devA.ListenPort != 51820 || devB.ListenPort != 51820 {
		t.Fatalf("listen ports %d/%d, want 51820 (the first port of each node)", devA.ListenPort, devB.ListenPort)
	}
	for _, x := range []struct {
		name      string
		dev       *wgnl.Device
		peerKey   wgnl.Key
		peerEnd   string
		otherPort uint16
	}{{"A", devA, devB.PublicKey, "192.0.2.2:51820", devB.ListenPort}, {"B", devB, devA.PublicKey, "192.0.2.1:51820", devA.ListenPort}} {
		if len(x.dev.Peers) != 1 {
			t.Fatalf("node %s: %d peers", x.name, len(x.dev.Peers))
		}
		p := x.dev.Peers[0]
		if p.PublicKey != x.peerKey || p.Endpoint.String() != x.peerEnd || p.PersistentKeepaliveInterval != wgKeepalive ||
			!slices.Equal(p.AllowedIPs, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}) {
			t.Fatalf("node %s: peer %+v", x.name, p)
		}
		if p.LastHandshake.IsZero() || p.RxBytes == 0 || p.TxBytes == 0 {
			t.Fatalf("node %s: no handshake or traffic with the peer: %+v", x.name, p)
		}
	}
	for _, d := range []*Dataplane{n.da, n.db} {
		st, err := d.Stats(ctx, "wg-1")
		if err != nil || st.ClientToEndpoint.Packets == 0 || st.EndpointToClient.Packets == 0 {
			t.Fatalf("stats %+v, %v", st, err)
		}
	}

	// Refresh on both nodes: nothing is re-created or reloaded, the
	// answer is the same.
	snapshot := func() []map[string]int {
		return []map[string]int{linkIndexes(t, n.a.hostPath), linkIndexes(t, n.b.hostPath), linkIndexes(t, client.path), linkIndexes(t, endpoint.path)}
	}
	links, progs := snapshot(), nstest.BPFProgIDs(t)
	refB, refA := cb.Clone(), ca.Clone()
	if err := n.db.Connect(ctx, refB); err != nil {
		t.Fatal(err)
	}
	if err := n.da.Connect(ctx, refA); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(refB.Client.Mechanism.Params, cb.Client.Mechanism.Params) || !maps.Equal(refA.Endpoint.Mechanism.Params, ca.Endpoint.Mechanism.Params) {
		t.Fatalf("refresh changed the mechanisms: %v -> %v", cb.Client.Mechanism.Params, refB.Client.Mechanism.Params)
	}
	if got := snapshot(); !slices.EqualFunc(got, links, maps.Equal) {
		t.Fatalf("refresh changed links: %v -> %v", links, got)
	}
	if got := nstest.BPFProgIDs(t); !slices.Equal(got, progs) {
		t.Fatalf("refresh changed BPF programs: %v -> %v", progs, got)
	}
	ping(t, client, "10.60.0.2")
	ping(t, endpoint, "fd60::1")

	// Node B's forwarder restarts: the new process adopts the tunnel as
	// it is, then, when the connection is no longer wanted, removes it.
	if err := n.db.Close(); err != nil {
		t.Fatal(err)
	}
	ping(t, client, "10.60.0.2")
	db2, err := New(ctx, Options{Name: n.b.name, HostNetNS: n.b.hostPath, PinDir: n.b.pinDir, Attach: attach, TunnelIP: netip.MustParseAddr("192.0.2.2")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db2.Close() })
	res, err := db2.Reconcile(ctx, []*forwarder.Conn{cb.Clone()})
	if err != nil || !slices.Equal(res.Adopted, []string{"wg-1"}) {
		t.Fatalf("Reconcile = %+v, %v; want wg-1 adopted", res, err)
	}
	if got := snapshot(); !slices.EqualFunc(got, links, maps.Equal) {
		t.Fatalf("adoption changed links: %v -> %v", links, got)
	}
	ping(t, client, "10.60.0.2")
	// After the restart the serving side still knows its port: a second
	// tunnel gets the next one.
	c2, e2 := newPeer(t), newPeer(t)
	_, cb2 := (&twoNodes{a: n.a, b: n.b, da: n.da, db: db2}).connectWG(t, "wg-2", c2, e2)
	if p := cb2.Client.Mechanism.Params[forwarder.ParamDstPort]; p != "51821" {
		t.Fatalf("second tunnel of node B on port %s, want 51821", p)
	}
	ping(t, c2, "10.60.0.2")

	if err := n.da.Disconnect(ctx, "wg-1"); err != nil {
		t.Fatal(err)
	}
	if err := n.da.Disconnect(ctx, "wg-2"); err != nil {
		t.Fatal(err)
	}
	res, err = db2.Reconcile(ctx, nil)
	if err != nil || len(res.Removed) != 2 {
		t.Fatalf("Reconcile(nil) = %+v, %v; want both removed", res, err)
	}
	for _, path := range []string{n.a.hostPath, n.b.hostPath} {
		if got := nstest.Links(t, path); !slices.Equal(got, []string{"lo", "up0"}) {
			t.Errorf("links left on node %s: %v", path, got)
		}
	}
	onlyLo(t, client.path, endpoint.path, c2.path, e2.path)
	for _, e := range []*env{n.a, n.b} {
		if ents, _ := os.ReadDir(filepath.Join(e.pinDir, e.name)); len(ents) > 0 {
			t.Errorf("pins left: %v", ents)
		}
	}
	if left := leftProgs(t, before); len(left) != 0 {
		t.Errorf("BPF programs left: %v", left)
	}
}

// An offer without a port (NSM's default) is read as 51820, and a refresh
// whose answer brings a new peer key updates the device's peer in place.
func TestWireGuardDefaultPortAndPeerChange(t *testing.T) {
	requireWireGuard(t)
	ctx := context.Background()
	n := newTwoNodes(t)
	peerKey := func() string {
		k, err := wgnl.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		return k.PublicKey().String()
	}
	c := newConn(t, "wg-def", forwarder.PayloadIP, newPeer(t), newPeer(t))
	c.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismWireGuard, Params: map[string]string{
		forwarder.ParamSrcIP: "192.0.2.1", forwarder.ParamSrcPublicKey: peerKey(),
	}}
	if err := n.db.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	name := vwire.HostIfName(n.b.name, c.ID, forwarder.SideClient)
	idx := linkIn(t, n.b.hostPath, name).Attrs().Index
	dev := wgDevice(t, n.b.hostPath, name)
	if len(dev.Peers) != 1 || dev.Peers[0].Endpoint.String() != "192.0.2.1:51820" {
		t.Fatalf("peers %+v, want one at 192.0.2.1:51820", dev.Peers)
	}
	ref := c.Clone()
	ref.Client.Mechanism.Params[forwarder.ParamSrcPublicKey] = peerKey()
	ref.Client.Mechanism.Params[forwarder.ParamSrcPort] = "51900"
	if err := n.db.Connect(ctx, ref); err != nil {
		t.Fatal(err)
	}
	if got := linkIn(t, n.b.hostPath, name).Attrs().Index; got != idx {
		t.Fatal("a new peer key re-created the device")
	}
	after := wgDevice(t, n.b.hostPath, name)
	if len(after.Peers) != 1 || after.Peers[0].PublicKey.String() != ref.Client.Mechanism.Params[forwarder.ParamSrcPublicKey] ||
		after.PublicKey != dev.PublicKey || ref.Client.Mechanism.Params[forwarder.ParamDstPublicKey] != dev.PublicKey.String() {
		t.Fatalf("after refresh: %+v (ours was %s)", after, dev.PublicKey)
	}
	if err := n.db.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
		t.Errorf("links left on node B: %v", got)
	}
}

// A new offer for a live connection (its Request sent again with fresh
// preferences) re-keys both halves in place: no device is re-created, the
// requesting side moves to the offered key and port, and the tunnel
// carries traffic under the new keys.
func TestWireGuardNewOffer(t *testing.T) {
	requireWireGuard(t)
	ctx := context.Background()
	n := newTwoNodes(t)
	client, endpoint := newPeer(t), newPeer(t)
	ca, cb := n.connectWG(t, "wg-rekey", client, endpoint)
	ping(t, client, "10.60.0.2")
	wgA := vwire.HostIfName(n.a.name, "wg-rekey", forwarder.SideEndpoint)
	wgB := vwire.HostIfName(n.b.name, "wg-rekey", forwarder.SideClient)
	idxA, idxB := linkIn(t, n.a.hostPath, wgA).Attrs().Index, linkIn(t, n.b.hostPath, wgB).Attrs().Index
	keyB := wgDevice(t, n.b.hostPath, wgB).PublicKey

	offer, ok := n.da.Offer(forwarder.MechanismWireGuard, forwarder.PayloadIP)
	if !ok || offer[forwarder.ParamSrcPort] != "51821" {
		t.Fatalf("second offer %v, want port 51821 (51820 is the device's)", offer)
	}
	cb2 := cb.Clone()
	maps.Copy(cb2.Client.Mechanism.Params, offer)
	if err := n.db.Connect(ctx, cb2); err != nil {
		t.Fatal(err)
	}
	ca2 := ca.Clone()
	ca2.Endpoint.Mechanism.Params = maps.Clone(cb2.Client.Mechanism.Params)
	if err := n.da.Connect(ctx, ca2); err != nil {
		t.Fatal(err)
	}
	if linkIn(t, n.a.hostPath, wgA).Attrs().Index != idxA || linkIn(t, n.b.hostPath, wgB).Attrs().Index != idxB {
		t.Fatal("a new offer re-created a device")
	}
	pingAll(t, client, endpoint, "10.60.0.1")
	devA, devB := wgDevice(t, n.a.hostPath, wgA), wgDevice(t, n.b.hostPath, wgB)
	if devA.PublicKey.String() != offer[forwarder.ParamSrcPublicKey] || devA.ListenPort != 51821 {
		t.Fatalf("node A's device: key %s port %d, want the offer's %v", devA.PublicKey, devA.ListenPort, offer)
	}
	if devB.PublicKey != keyB || len(devB.Peers) != 1 || devB.Peers[0].PublicKey != devA.PublicKey || devB.Peers[0].Endpoint.String() != "192.0.2.1:51821" {
		t.Fatalf("node B's device: %+v", devB)
	}
	if len(devA.Peers) != 1 || devA.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("node A: no handshake under the new key: %+v", devA.Peers)
	}
	for _, x := range []struct {
		d    *Dataplane
		path string
	}{{n.da, n.a.hostPath}, {n.db, n.b.hostPath}} {
		if err := x.d.Disconnect(ctx, "wg-rekey"); err != nil {
			t.Fatal(err)
		}
		if got := nstest.Links(t, x.path); !slices.Equal(got, []string{"lo", "up0"}) {
			t.Errorf("links left on node %s: %v", x.path, got)
		}
	}
	onlyLo(t, client.path, endpoint.path)
}

// Bad WireGuard input is a clear forwarder error and leaves nothing behind,
// also when it is found only after part of the vWire was built.
func TestWireGuardBadInput(t *testing.T) {
	requireWireGuard(t)
	ctx := context.Background()
	n := newTwoNodes(t)
	before := nstest.BPFProgIDs(t)
	offer, ok := n.da.Offer(forwarder.MechanismWireGuard, forwarder.PayloadIP)
	if !ok {
		t.Fatal("no offer")
	}
	stranger, err := wgnl.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	neverOffered, err := wgnl.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	answer := map[string]string{ // what B would answer to A's offer
		forwarder.ParamSrcIP: offer[forwarder.ParamSrcIP], forwarder.ParamSrcPort: offer[forwarder.ParamSrcPort],
		forwarder.ParamSrcPublicKey: offer[forwarder.ParamSrcPublicKey],
		forwarder.ParamDstIP:        "192.0.2.2", forwarder.ParamDstPort: "51820", forwarder.ParamDstPublicKey: stranger.PublicKey().String(),
	}
	with := func(base map[string]string, kv ...string) forwarder.Mechanism {
		p := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(p, kv[i])
			} else {
				p[kv[i]] = kv[i+1]
			}
		}
		return forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismWireGuard, Params: p}
	}
	const cf, ef = "connection.mechanism.parameters.", "endpoint.connection.mechanism.parameters."
	for _, tt := range []struct {
		name    string
		side    forwarder.SideKind
		m       forwarder.Mechanism
		payload forwarder.Payload
		code    forwarder.Code
		field   string
		checked bool // Check finds it too
	}{
		{"ethernet payload", forwarder.SideClient, with(offer), forwarder.PayloadEthernet, forwarder.CodeInvalidArgument, "connection.payload", false},
		{"no src_public_key", forwarder.SideClient, with(offer, forwarder.ParamSrcPublicKey, ""), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_public_key", true},
		{"bad src_public_key", forwarder.SideClient, with(offer, forwarder.ParamSrcPublicKey, "bm90IGEga2V5"), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_public_key", true},
		{"no src_ip", forwarder.SideClient, with(offer, forwarder.ParamSrcIP, ""), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_ip", true},
		{"other family", forwarder.SideClient, with(offer, forwarder.ParamSrcIP, "2001:db8::1"), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_ip", true},
		{"not our dst_ip", forwarder.SideClient, with(offer, forwarder.ParamDstIP, "192.0.2.77"), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "dst_ip", true},
		{"bad src_port", forwarder.SideClient, with(offer, forwarder.ParamSrcPort, "0"), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_port", true},
		{"our own key", forwarder.SideClient, with(offer, forwarder.ParamDstPublicKey, offer[forwarder.ParamSrcPublicKey]), forwarder.PayloadIP, forwarder.CodeInvalidArgument, cf + "src_public_key", true},
		{"answer without key", forwarder.SideEndpoint, with(answer, forwarder.ParamDstPublicKey, ""), forwarder.PayloadIP, forwarder.CodeInvalidArgument, ef + "dst_public_key", true},
		{"answer without dst_ip", forwarder.SideEndpoint, with(answer, forwarder.ParamDstIP, ""), forwarder.PayloadIP, forwarder.CodeInvalidArgument, ef + "dst_ip", true},
		{"not our src_ip", forwarder.SideEndpoint, with(answer, forwarder.ParamSrcIP, "192.0.2.9"), forwarder.PayloadIP, forwarder.CodeInvalidArgument, ef + "src_ip", true},
		{"offer we never made", forwarder.SideEndpoint, with(answer, forwarder.ParamSrcPublicKey, neverOffered.PublicKey().String()), forwarder.PayloadIP, forwarder.CodeFailedPrecondition, ef + "src_public_key", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, e := n.db, n.b
			if tt.side == forwarder.SideEndpoint {
				d, e = n.da, n.a
			}
			err := d.Check(ctx, "bad", tt.side, tt.m)
			if fe, ok := errors.AsType[*forwarder.Error](err); tt.checked && (!ok || fe.Code != tt.code || fe.Field != tt.field) {
				t.Fatalf("Check: %v, want %v on %s", err, tt.code, tt.field)
			}
			c := newConn(t, "bad", tt.payload, newPeer(t), newPeer(t))
			if tt.side == forwarder.SideClient {
				c.Client.Mechanism = tt.m
			} else {
				c.Endpoint.Mechanism = tt.m
			}
			err = d.Connect(ctx, c)
			if fe, ok := errors.AsType[*forwarder.Error](err); !ok || fe.Code != tt.code || fe.Field != tt.field {
				t.Fatalf("Connect: %v, want %v on %s", err, tt.code, tt.field)
			}
			if got := nstest.Links(t, e.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
				t.Errorf("links left: %v", got)
			}
		})
	}

	// A failure after the WireGuard device was built (the endpoint's
	// interface name is taken) rolls it back, and frees its port.
	client, endpoint := newPeer(t), newPeer(t)
	if out, err := nstest.Exec(t, endpoint.name, "ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	c := newConn(t, "rollback", forwarder.PayloadIP, client, endpoint)
	c.Client.Mechanism = with(offer)
	c.Endpoint.Mechanism.Params[forwarder.ParamIfName] = "taken0"
	if err := n.db.Connect(ctx, c); forwarder.CodeOf(err) != forwarder.CodeAlreadyExists {
		t.Fatalf("Connect over a taken name: %v, want AlreadyExists", err)
	}
	if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
		t.Errorf("links left on node B after rollback: %v", got)
	}
	c = newConn(t, "rollback", forwarder.PayloadIP, client, endpoint)
	c.Client.Mechanism = with(offer)
	if err := n.db.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if p := c.Client.Mechanism.Params[forwarder.ParamDstPort]; p != "51820" {
		t.Fatalf("port after a rollback: %s, want 51820 again", p)
	}
	if err := n.db.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
		t.Errorf("links left on node B: %v", got)
	}
	if left := leftProgs(t, before); len(left) != 0 {
		t.Errorf("BPF programs left: %v", left)
	}
}

// TestWireGuardL3XConnect checks the cross-connect's handling of a device
// without a link-layer header, the way a WireGuard side uses it, with a tun
// device (ARPHRD_NONE too) standing in for WireGuard: it needs no
// wireguard module, so it runs on any kernel. What the client sends comes
// out of the tun as bare IP packets; echo replies written into the tun
// reach the client, which needs an Ethernet header added.
func TestWireGuardL3XConnect(t *testing.T) {
	for _, mode := range []xconnect.Mode{xconnect.ModeTC, xconnect.ModeTCX} {
		t.Run(string(mode), func(t *testing.T) { testL3XConnect(t, mode) })
	}
}

func testL3XConnect(t *testing.T, mode xconnect.Mode) {
	e := newEnv(t)
	before := nstest.BPFProgIDs(t)
	client := newPeer(t)
	for _, args := range [][]string{
		{"ip", "link", "add", "nfc-l3", "type", "veth", "peer", "name", "nsm0", "netns", client.name},
		{"ip", "link", "set", "nfc-l3", "addrgenmode", "none"},
		{"ip", "link", "set", "nfc-l3", "up"},
	} {
		if out, err := nstest.Exec(t, e.hostName, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	for _, args := range [][]string{
		{"ip", "link", "set", "nsm0", "arp", "off"},
		{"ip", "link", "set", "nsm0", "up"},
		{"ip", "addr", "add", "10.60.0.1/32", "dev", "nsm0"},
		{"ip", "addr", "add", "fd60::1/128", "dev", "nsm0", "nodad"},
		{"ip", "route", "add", "10.60.0.2/32", "dev", "nsm0"},
		{"ip", "route", "add", "fd60::2/128", "dev", "nsm0"},
	} {
		if out, err := nstest.Exec(t, client.name, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	hostNS, err := netns.GetFromPath(e.hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()
	tun := openTun(t, hostNS, "tun-l3")
	for _, args := range [][]string{{"ip", "link", "set", "tun-l3", "addrgenmode", "none"}, {"ip", "link", "set", "tun-l3", "up"}} {
		if out, err := nstest.Exec(t, e.hostName, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	var wg sync.WaitGroup
	seen := make(chan string, 64)
	wg.Go(func() { echo(tun, seen) })
	t.Cleanup(func() {
		_ = tun.Close()
		wg.Wait()
	})

	host := linkIn(t, e.hostPath, "nfc-l3")
	pinDir := connPinDir(e.pinDir, e.name, "l3")
	opts := xconnect.Options{PinDir: pinDir, Mode: mode, HostNS: hostNS}
	x, err := xconnect.Install(opts, xconnect.Config{
		ClientIfindex:   host.Attrs().Index,
		EndpointIfindex: linkIn(t, e.hostPath, "tun-l3").Attrs().Index,
		PeerClient:      true,
		IPMode:          true,
		ClientMAC:       linkIn(t, client.path, "nsm0").Attrs().HardwareAddr,
		EndpointMAC:     host.Attrs().HardwareAddr,
		EndpointL3:      true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	ping(t, client, "10.60.0.2")
	ping(t, client, "fd60::2")
	got := map[string]bool{}
	for len(seen) > 0 {
		got[<-seen] = true
	}
	if !got["10.60.0.1>10.60.0.2"] || !got["fd60::1>fd60::2"] {
		t.Fatalf("echo requests seen on the tun: %v", got)
	}
	st, err := x.ReadStats()
	if err != nil || st.ClientToEndpoint.Packets < 4 || st.EndpointToClient.Packets < 4 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if err := xconnect.Remove(opts, host.Attrs().Index, linkIn(t, e.hostPath, "tun-l3").Attrs().Index); err != nil {
		t.Fatal(err)
	}
	_ = x.Close()
	if left := leftProgs(t, before); len(left) != 0 {
		t.Errorf("BPF programs left: %v", left)
	}
}

// openTun creates tun device name (IFF_TUN, no packet information) in ns,
// from a locked helper thread, and returns its queue.
func openTun(t *testing.T, ns netns.NsHandle, name string) *os.File {
	t.Helper()
	var fd int
	err := inetns.Do(ns, func() error {
		var err error
		if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			_ = unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			_ = unix.Close(fd)
			return err
		}
		return unix.SetNonblock(fd, true)
	})
	if err != nil {
		t.Skipf("no tun device (/dev/net/tun, tun module): %v", err)
	}
	return os.NewFile(uintptr(fd), "tun")
}

// echo answers the ICMP and ICMPv6 echo requests read from tun, and
// reports each request's "src>dst" on seen, until tun is closed.
func echo(tun *os.File, seen chan<- string) {
	buf := make([]byte, 65536)
	for {
		n, err := tun.Read(buf)
		if err != nil {
			return
		}
		p := buf[:n]
		var reply []byte
		var flow string
		switch {
		case n >= 28 && p[0]>>4 == 4 && p[9] == unix.IPPROTO_ICMP:
			ihl := int(p[0]&0xf) * 4
			if n < ihl+8 || p[ihl] != 8 {
				continue
			}
			src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
			flow = src.String() + ">" + dst.String()
			reply = slices.Clone(p)
			copy(reply[12:16], p[16:20])
			copy(reply[16:20], p[12:16]) // the header checksum stays right
			reply[ihl] = 0               // echo reply
			binary.BigEndian.PutUint16(reply[ihl+2:], 0)
			binary.BigEndian.PutUint16(reply[ihl+2:], checksum(reply[ihl:], 0))
		case n >= 48 && p[0]>>4 == 6 && p[6] == unix.IPPROTO_ICMPV6 && p[40] == 128:
			src, dst := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
			flow = src.String() + ">" + dst.String()
			reply = slices.Clone(p)
			copy(reply[8:24], p[24:40])
			copy(reply[24:40], p[8:24])
			reply[40] = 129 // echo reply
			binary.BigEndian.PutUint16(reply[42:], 0)
			// Pseudo-header: addresses, upper-layer length, next header.
			var pseudo uint32
			for i := 8; i < 40; i += 2 {
				pseudo += uint32(binary.BigEndian.Uint16(reply[i:]))
			}
			pseudo += uint32(n-40) + unix.IPPROTO_ICMPV6
			binary.BigEndian.PutUint16(reply[42:], checksum(reply[40:], pseudo))
		default:
			continue
		}
		select {
		case seen <- flow:
		default:
		}
		_, _ = tun.Write(reply)
	}
}

// checksum is the Internet checksum of b, starting from sum.
func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
