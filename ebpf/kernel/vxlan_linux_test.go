package kernel

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// twoNodes is two "nodes" (each a namespace with its own kernel dataplane)
// joined by a veth uplink: A at 192.0.2.1, B at 192.0.2.2, uplink MTU 1500.
type twoNodes struct {
	a, b   *env
	da, db *Dataplane
}

func newTwoNodes(t *testing.T) *twoNodes {
	t.Helper()
	return newTwoNodesAttach(t, "")
}

// newTwoNodesAttach is newTwoNodes with the dataplanes in attach mode
// attach.
func newTwoNodesAttach(t *testing.T, attach string) *twoNodes {
	t.Helper()
	n := &twoNodes{a: newEnv(t), b: newEnv(t)}
	if _, err := nstest.Exec(t, n.a.hostName, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", n.b.hostName); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct{ ns, addr string }{{n.a.hostName, "192.0.2.1/24"}, {n.b.hostName, "192.0.2.2/24"}} {
		for _, args := range [][]string{{"ip", "addr", "add", x.addr, "dev", "up0"}, {"ip", "link", "set", "up0", "up"}, {"ip", "link", "set", "lo", "up"}} {
			if out, err := nstest.Exec(t, x.ns, args...); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
	}
	mk := func(e *env, ip string) *Dataplane {
		d, err := New(context.Background(), Options{Name: e.name, HostNetNS: e.hostPath, PinDir: e.pinDir, Attach: attach, TunnelIP: netip.MustParseAddr(ip)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	n.da, n.db = mk(n.a, "192.0.2.1"), mk(n.b, "192.0.2.2")
	return n
}

// connect builds one cross-node connection the way two forwarders do it:
// A offers VXLAN, B (serving the Request) completes the mechanism and
// builds its half, A builds its half from B's answer.
func (n *twoNodes) connect(t *testing.T, id string, payload forwarder.Payload, client, endpoint peerNS) (ca, cb *forwarder.Conn) {
	t.Helper()
	base := newConn(t, id, payload, client, endpoint)
	base.MTU = 0 // the tunnel sets it
	offer := forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVXLAN, Params: offerVXLAN(n.da)}
	cb = base.Clone()
	cb.Client.Mechanism = offer
	if err := n.db.Connect(context.Background(), cb); err != nil {
		t.Fatalf("node B: %v", err)
	}
	ca = base.Clone()
	ca.Endpoint.Mechanism = cb.Client.Mechanism
	ca.MTU = cb.MTU
	if err := n.da.Connect(context.Background(), ca); err != nil {
		t.Fatalf("node A: %v", err)
	}
	return ca, cb
}

func TestVXLANAcrossNodes(t *testing.T) {
	for _, payload := range []forwarder.Payload{forwarder.PayloadEthernet, forwarder.PayloadIP} {
		t.Run(string(payload), func(t *testing.T) {
			n := newTwoNodes(t)
			before := nstest.BPFProgIDs(t)
			client, endpoint := newPeer(t), newPeer(t)
			ca, cb := n.connect(t, "vx-1", payload, client, endpoint)

			m := cb.Client.Mechanism.Params
			if m[forwarder.ParamDstIP] != "192.0.2.2" || m[forwarder.ParamDstPort] != "4789" || m[forwarder.ParamMTU] != "1450" {
				t.Fatalf("B's answer: %v", m)
			}
			vni, err := forwarder.ParseVNI(m[forwarder.ParamVNI])
			if err != nil {
				t.Fatal(err)
			}
			// NSM's parity rule: even when the client's tunnel end sorts first.
			if vni%2 != 0 {
				t.Fatalf("vni %d is odd; 192.0.2.1 < 192.0.2.2 wants even", vni)
			}
			if cb.MTU != 1450 || ca.MTU != 1450 {
				t.Fatalf("connection MTU %d/%d, want 1450 (uplink 1500 - VXLAN over IPv4)", ca.MTU, cb.MTU)
			}
			if mtu := linkIn(t, client.path, "nsm0").Attrs().MTU; mtu != 1450 {
				t.Fatalf("client interface MTU %d, want 1450", mtu)
			}
			pingAll(t, client, endpoint, "10.60.0.1")
			// A full-size frame crosses the tunnel unfragmented.
			if out, err := nstest.Exec(t, client.name, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", "10.60.0.2"); err != nil {
				t.Fatalf("1450-byte ping: %v\n%s", err, out)
			}

			// Refresh on both nodes: the same tunnel, traffic still passes.
			vxB := linkIn(t, n.b.hostPath, vwire.HostIfName(n.b.name, "vx-1", forwarder.SideClient))
			refB := cb.Clone()
			if err := n.db.Connect(context.Background(), refB); err != nil {
				t.Fatal(err)
			}
			if refB.Client.Mechanism.Params[forwarder.ParamVNI] != m[forwarder.ParamVNI] {
				t.Fatalf("refresh changed the VNI: %s -> %s", m[forwarder.ParamVNI], refB.Client.Mechanism.Params[forwarder.ParamVNI])
			}
			if err := n.da.Connect(context.Background(), ca.Clone()); err != nil {
				t.Fatal(err)
			}
			if got := linkIn(t, n.b.hostPath, vxB.Attrs().Name).Attrs().Index; got != vxB.Attrs().Index {
				t.Fatal("refresh rebuilt the VXLAN device")
			}
			ping(t, client, "10.60.0.2")
			st, err := n.db.Stats(context.Background(), "vx-1")
			if err != nil || st.ClientToEndpoint.Packets == 0 || st.EndpointToClient.Packets == 0 {
				t.Fatalf("B's stats %+v, %v", st, err)
			}

			for _, x := range []struct {
				d    *Dataplane
				path string
			}{{n.da, n.a.hostPath}, {n.db, n.b.hostPath}} {
				if err := x.d.Disconnect(context.Background(), "vx-1"); err != nil {
					t.Fatal(err)
				}
				if got := nstest.Links(t, x.path); !slices.Equal(got, []string{"lo", "up0"}) {
					t.Errorf("links left on node %s: %v", x.path, got)
				}
			}
			onlyLo(t, client.path, endpoint.path)
			if left := leftProgs(t, before); len(left) != 0 {
				t.Errorf("BPF programs left: %v", left)
			}
		})
	}
}

// Concurrent Requests served by one node get distinct VNIs, and each
// tunnel carries its own connection's traffic.
func TestVXLANConcurrentVNIs(t *testing.T) {
	n := newTwoNodes(t)
	const k = 8
	var wg sync.WaitGroup
	conns := make([]*forwarder.Conn, k)
	errs := make([]error, k)
	for i := range k {
		c := newConn(t, "vxc-"+strconv.Itoa(i), forwarder.PayloadEthernet, newPeer(t), newPeer(t))
		c.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVXLAN, Params: offerVXLAN(n.da)}
		conns[i] = c
		wg.Go(func() { errs[i] = n.db.Connect(context.Background(), c) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, c := range conns {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		v := c.Client.Mechanism.Params[forwarder.ParamVNI]
		if seen[v] {
			t.Fatalf("VNI %s given twice", v)
		}
		seen[v] = true
	}
	for _, c := range conns {
		if err := n.db.Disconnect(context.Background(), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
		t.Errorf("links left on node B: %v", got)
	}
}

// Bad VXLAN parameters are InvalidArgument naming the parameter, and a
// Connect that fails on them leaves nothing on the node.
func TestVXLANBadInput(t *testing.T) {
	n := newTwoNodes(t)
	offer := offerVXLAN(n.da)
	with := func(kv ...string) forwarder.Mechanism {
		p := map[string]string{}
		for k, v := range offer {
			p[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				delete(p, kv[i])
			} else {
				p[kv[i]] = kv[i+1]
			}
		}
		return forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVXLAN, Params: p}
	}
	for _, tt := range []struct {
		name  string
		side  forwarder.SideKind
		m     forwarder.Mechanism
		field string
	}{
		{"no src_ip", forwarder.SideClient, with(forwarder.ParamSrcIP, ""), "connection.mechanism.parameters.src_ip"},
		{"other family", forwarder.SideClient, with(forwarder.ParamSrcIP, "2001:db8::1"), "connection.mechanism.parameters.src_ip"},
		{"not our dst", forwarder.SideClient, with(forwarder.ParamDstIP, "192.0.2.77"), "connection.mechanism.parameters.dst_ip"},
		{"other port", forwarder.SideClient, with(forwarder.ParamSrcPort, "4790"), "connection.mechanism.parameters.src_port"},
		{"answer without vni", forwarder.SideEndpoint, with(forwarder.ParamSrcIP, "192.0.2.2", forwarder.ParamDstIP, "192.0.2.1"), "endpoint.connection.mechanism.parameters.vni"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := n.db.Check(context.Background(), "bad", tt.side, tt.m)
			fe, ok := errors.AsType[*forwarder.Error](err)
			if !ok || fe.Code != forwarder.CodeInvalidArgument || fe.Field != tt.field {
				t.Fatalf("Check: %v, want InvalidArgument on %s", err, tt.field)
			}
			c := newConn(t, "bad", forwarder.PayloadEthernet, newPeer(t), newPeer(t))
			if tt.side == forwarder.SideClient {
				c.Client.Mechanism = tt.m
			} else {
				c.Endpoint.Mechanism = tt.m
			}
			err = n.db.Connect(context.Background(), c)
			if fe, ok := errors.AsType[*forwarder.Error](err); !ok || fe.Code != forwarder.CodeInvalidArgument {
				t.Fatalf("Connect: %v, want InvalidArgument", err)
			}
			if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
				t.Errorf("links left on node B: %v", got)
			}
		})
	}
	// On a kernel without WireGuard, WIREGUARD is neither offered nor
	// accepted, on either side, with a clear error (wireguard_linux_test.go
	// covers a kernel that has it).
	if !slices.Contains(n.db.Mechanisms(forwarder.SideClient), forwarder.MechanismWireGuard) {
		if p, ok := n.da.Offer(forwarder.MechanismWireGuard, forwarder.PayloadIP); ok || p != nil {
			t.Fatalf("WireGuard offered without WireGuard in the kernel: %v", p)
		}
		wg := forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismWireGuard, Params: map[string]string{forwarder.ParamSrcIP: "192.0.2.1"}}
		for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
			err := n.db.Check(context.Background(), "wg", side, wg)
			if fe, ok := errors.AsType[*forwarder.Error](err); !ok || fe.Code != forwarder.CodeInvalidArgument || !strings.Contains(err.Error(), "kernel has no WireGuard") {
				t.Fatalf("WireGuard on the %s side: %v", side, err)
			}
		}
		c := newConn(t, "wg", forwarder.PayloadIP, newPeer(t), newPeer(t))
		c.Endpoint.Mechanism = wg
		if err := n.db.Connect(context.Background(), c); err == nil || !strings.Contains(err.Error(), "kernel has no WireGuard") {
			t.Fatalf("Connect with WireGuard: %v", err)
		}
		if got := nstest.Links(t, n.b.hostPath); !slices.Equal(got, []string{"lo", "up0"}) {
			t.Errorf("links left on node B: %v", got)
		}
	}
	// Without a tunnel address the kernel dataplane offers and accepts no VXLAN.
	d := newEnv(t).dataplane("")
	if slices.Contains(d.Mechanisms(forwarder.SideClient), forwarder.MechanismVXLAN) || offerVXLAN(d) != nil {
		t.Fatal("VXLAN offered without a tunnel address")
	}
}

// offerVXLAN is what o offers for VXLAN with an ETHERNET payload.
func offerVXLAN(o forwarder.Offerer) map[string]string {
	p, _ := o.Offer(forwarder.MechanismVXLAN, forwarder.PayloadEthernet)
	return p
}
