package kernel

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestVLANTrunk: a node and a "switch" joined by phys0, each with a kernel
// dataplane that has phys0 as its VLAN device for via=gw1. On the switch,
// a gateway namespace sits on VLAN 100 and another on VLAN 200; on the
// node, two clients join VLAN 100 and one VLAN 200. Untagged or
// wrongly-tagged frames are never taken off the trunk, so a ping that
// passes proves the tag; each client reaches its own VLAN's gateway only.
func TestVLANTrunk(t *testing.T) {
	node, sw := newEnv(t), newEnv(t)
	if out, err := nstest.Exec(t, node.hostName, "ip", "link", "add", "phys0", "type", "veth", "peer", "name", "phys0", "netns", sw.hostName); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, ns := range []string{node.hostName, sw.hostName} {
		if out, err := nstest.Exec(t, ns, "ip", "link", "set", "phys0", "up"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	mk := func(e *env) *Dataplane {
		d, err := New(context.Background(), Options{Name: e.name, HostNetNS: e.hostPath, PinDir: e.pinDir, VLANDevices: map[string]string{"gw1": "phys0"}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	dn, ds := mk(node), mk(sw)
	if !slices.Contains(dn.Mechanisms(forwarder.SideEndpoint), forwarder.MechanismVLAN) || slices.Contains(dn.Mechanisms(forwarder.SideClient), forwarder.MechanismVLAN) {
		t.Fatalf("mechanisms: client %v, endpoint %v", dn.Mechanisms(forwarder.SideClient), dn.Mechanisms(forwarder.SideEndpoint))
	}
	before := nstest.BPFProgIDs(t)
	conn := func(id, addr, vid string) (*forwarder.Conn, peerNS) {
		p := newPeer(t)
		return &forwarder.Conn{ID: id, Payload: forwarder.PayloadEthernet, Labels: map[string]string{forwarder.ViaLabel: "gw1"},
			Client: forwarder.Side{
				Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{forwarder.ParamNetNSURL: "file://" + p.path, forwarder.ParamIfName: "nsm0"}},
				IP:        forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}},
			},
			Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVLAN, Params: map[string]string{forwarder.ParamVLANID: vid}}},
		}, p
	}
	connect := func(d *Dataplane, c *forwarder.Conn) {
		t.Helper()
		if err := d.Connect(context.Background(), c); err != nil {
			t.Fatalf("%s: %v", c.ID, err)
		}
	}
	g100c, _ := conn("gw-100", "10.70.0.100/24", "100")
	g200c, _ := conn("gw-200", "10.70.0.200/24", "200")
	c1, p1 := conn("vl-1", "10.70.0.1/24", "100")
	c2, p2 := conn("vl-2", "10.70.0.2/24", "100")
	c3, p3 := conn("vl-3", "10.70.0.3/24", "200")
	connect(ds, g100c)
	connect(ds, g200c)
	for _, c := range []*forwarder.Conn{c1, c2, c3} {
		connect(dn, c)
	}
	if c1.MTU != 1500 {
		t.Fatalf("MTU %d, want phys0's 1500", c1.MTU)
	}
	ping(t, p1, "10.70.0.100")
	ping(t, p2, "10.70.0.100")
	ping(t, p3, "10.70.0.200")
	for _, x := range []struct {
		from peerNS
		to   string
	}{{p3, "10.70.0.100"}, {p1, "10.70.0.200"}} {
		if out, err := nstest.Exec(t, x.from.name, "ping", "-c", "1", "-W", "1", x.to); err == nil {
			t.Fatalf("%s reached %s across VLANs:\n%s", x.from.name, x.to, out)
		}
	}
	if err := dn.Connect(context.Background(), c1.Clone()); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	ping(t, p1, "10.70.0.100")
	if st, err := dn.Stats(context.Background(), "vl-1"); err != nil || st.ClientToEndpoint.Packets == 0 || st.EndpointToClient.Packets == 0 {
		t.Fatalf("stats %+v, %v", st, err)
	}

	// Bad input: IP payload, an unknown via label, no VLAN id.
	for i, mod := range []func(c *forwarder.Conn){
		func(c *forwarder.Conn) { c.Payload = forwarder.PayloadIP },
		func(c *forwarder.Conn) { c.Labels[forwarder.ViaLabel] = "nowhere" },
		func(c *forwarder.Conn) { delete(c.Endpoint.Mechanism.Params, forwarder.ParamVLANID) },
	} {
		c, _ := conn("vl-bad", "10.70.0.9/24", "100")
		mod(c)
		err := dn.Connect(context.Background(), c)
		if fe, ok := errors.AsType[*forwarder.Error](err); !ok || fe.Code != forwarder.CodeInvalidArgument {
			t.Fatalf("bad input %d: %v, want InvalidArgument", i, err)
		}
	}

	// One client leaves: the other keeps its VLAN.
	if err := dn.Disconnect(context.Background(), "vl-1"); err != nil {
		t.Fatal(err)
	}
	ping(t, p2, "10.70.0.100")
	for _, id := range []string{"vl-2", "vl-3"} {
		if err := dn.Disconnect(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"gw-100", "gw-200"} {
		if err := ds.Disconnect(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []*env{node, sw} {
		if got := nstest.Links(t, e.hostPath); !slices.Equal(got, []string{"lo", "phys0"}) {
			t.Errorf("links left: %v", got)
		}
		if out, _ := nstest.Exec(t, e.hostName, "tc", "filter", "show", "dev", "phys0", "ingress"); out != "" {
			t.Errorf("filters left on phys0:\n%s", out)
		}
	}
	onlyLo(t, p1.path, p2.path, p3.path)
	if left := leftProgs(t, before); len(left) != 0 {
		t.Fatalf("BPF programs left: %v", left)
	}
}
