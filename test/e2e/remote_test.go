package e2e

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestCrossNodeVXLAN: the client on node A, the endpoint on node B, a
// forwarder on each (two namespaces joined by a veth uplink, MTU 1500).
// A's next hop is B's forwarder, as NSMgr would route a Request for a
// remote endpoint; B prefers VXLAN (NSM_MECHANISM_PRIORITY) where NSMgr
// would have kept only REMOTE mechanisms on a Request from another node.
// Traffic passes through the tunnel; refresh keeps it; Close from the
// client removes both halves and every BPF program.
func TestCrossNodeVXLAN(t *testing.T) {
	w := newWorld(t, "e2ex")
	nodeB, nodeBPath := nstest.New(t)
	progsBefore := nstest.BPFProgIDs(t)
	for _, args := range [][]string{
		{"ip", "-n", w.node, "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", nodeB},
		{"ip", "-n", w.node, "addr", "add", "192.0.2.1/24", "dev", "up0"},
		{"ip", "-n", nodeB, "addr", "add", "192.0.2.2/24", "dev", "up0"},
		{"ip", "-n", w.node, "link", "set", "up0", "up"},
		{"ip", "-n", nodeB, "link", "set", "up0", "up"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	w.startNSE("NSM_SERVICE_NAMES=icmp-responder", "NSM_CIDR_PREFIX=169.254.0.0/16")
	nameB := w.name + "-b"
	t.Cleanup(func() { _ = exec.Command("rm", "-rf", filepath.Join("/sys/fs/bpf/nsmfwd", nameB)).Run() })
	sockB := filepath.Join(w.dir, "fwd-b.sock")
	start(t, w, "nsmfwd-b", []string{
		"NSM_NAME=" + nameB,
		"NSM_LISTEN_ON=unix://" + sockB,
		"NSM_CONNECT_TO=unix://" + filepath.Join(w.dir, "nse.sock"),
		"NSM_STATE_DIR=" + filepath.Join(w.dir, "state-b"),
		"NSM_TUNNEL_IP=192.0.2.2",
		"NSM_MECHANISM_PRIORITY=VXLAN",
		"NSM_LOG_LEVEL=DEBUG",
		"NSM_INSECURE=true",
	}, "nsenter", "--net="+nodeBPath, filepath.Join(w.bin, "nsmfwd"))
	waitSocket(t, sockB)
	w.fwdEnv = []string{"NSM_CONNECT_TO=unix://" + sockB, "NSM_TUNNEL_IP=192.0.2.1"}
	w.startForwarder()
	_, client := w.dialForwarder()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := nsc.Request(ctx, client, nsc.RequestOptions{NetworkService: "icmp-responder", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: "nsm0"})
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.GetContext().GetMTU(); got != 1450 {
		t.Fatalf("connection MTU %d, want 1450 (uplink 1500 minus VXLAN over IPv4)", got)
	}
	if err := w.ping(w.client, epAddr(conn)); err != nil {
		t.Fatal(err)
	}
	if out, err := nstest.Exec(t, w.client, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", epAddr(conn).String()); err != nil {
		t.Fatalf("full-size ping through the tunnel: %v\n%s", err, out)
	}
	vxlans := func(path string) []string {
		var out []string
		for _, l := range nstest.Links(t, path) {
			if l != "lo" && l != "up0" {
				out = append(out, l)
			}
		}
		return out
	}
	// Node A: the client's veth host end and the tunnel; node B: the
	// tunnel and the endpoint's veth host end.
	if a, b := vxlans(w.nodePath), vxlans(nodeBPath); len(a) != 2 || len(b) != 2 {
		t.Fatalf("node links: A %v, B %v", a, b)
	}
	for _, ns := range []string{w.node, nodeB} {
		out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "type", "vxlan").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "vxlan id ") || !strings.Contains(string(out), "dstport 4789") {
			t.Fatalf("no VXLAN device on node %s: %v\n%s", ns, err, out)
		}
	}

	conn, err = nsc.Refresh(ctx, client, conn, time.Minute)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if err := w.ping(w.client, epAddr(conn)); err != nil {
		t.Fatalf("after refresh: %v", err)
	}
	if err := nsc.Close(ctx, client, conn); err != nil {
		t.Fatal(err)
	}

	// Close on the endpoint's side first, as NSMgr there would when the
	// client's node is gone: B removes its half, A's stays until A's own
	// Close, which finds nothing left at B and is still fine.
	conn, err = nsc.Request(ctx, client, nsc.RequestOptions{NetworkService: "icmp-responder", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: "nsm1"})
	if err != nil {
		t.Fatal(err)
	}
	ccB, err := grpc.NewClient("unix://"+sockB, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer ccB.Close()
	asA := conn.Clone() // the connection as A sent it: A's segment is the caller
	asA.Path.Index = 1
	asA.Id = asA.GetPath().GetPathSegments()[1].GetId()
	if _, err := networkservice.NewNetworkServiceClient(ccB).Close(ctx, asA); err != nil {
		t.Fatalf("Close at B: %v", err)
	}
	if b := vxlans(nodeBPath); len(b) != 0 {
		t.Fatalf("node B kept %v after its Close", b)
	}
	if a := vxlans(w.nodePath); len(a) != 2 {
		t.Fatalf("node A: %v, want its half still there", a)
	}
	if err := nsc.Close(ctx, client, conn); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (len(vxlans(w.nodePath))+len(vxlans(nodeBPath)) > 0) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if a, b := vxlans(w.nodePath), vxlans(nodeBPath); len(a)+len(b) > 0 {
		t.Fatalf("left after Close: node A %v, node B %v", a, b)
	}
	if got := nstest.BPFProgIDs(t); !slices.Equal(sorted(got), sorted(progsBefore)) {
		t.Fatalf("BPF programs left after Close: %v -> %v", progsBefore, got)
	}
}

// TestRemoteVLAN: a remote-VLAN endpoint (nse with NSM_VLAN_ID) stands for
// VLAN 100 of the physical network, which the node reaches by phys0
// (NSM_DEVICE_SELECTOR_FILE maps via=gw1 to it). Beyond phys0, a "switch"
// namespace holds the VLAN's gateway, put there by a kernel dataplane of
// its own. The client, asking with via=gw1, pings the gateway; Close
// leaves nothing on the node.
func TestRemoteVLAN(t *testing.T) {
	w := newWorld(t, "e2ev")
	sw, swPath := nstest.New(t)
	_, gwPath := nstest.New(t)
	progsBefore := nstest.BPFProgIDs(t)
	for _, args := range [][]string{
		{"ip", "-n", w.node, "link", "add", "phys0", "type", "veth", "peer", "name", "phys0", "netns", sw},
		{"ip", "-n", w.node, "link", "set", "phys0", "up"},
		{"ip", "-n", sw, "link", "set", "phys0", "up"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	selector := filepath.Join(w.dir, "devices.yaml")
	if err := os.WriteFile(selector, []byte("interfaces:\n  - name: phys0\n    matches:\n      - labelSelector:\n          - via: gw1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.startNSE("NSM_SERVICE_NAMES=vlan100", "NSM_CIDR_PREFIX=172.31.0.0/24", "NSM_VLAN_ID=100")
	w.fwdEnv = []string{"NSM_DEVICE_SELECTOR_FILE=" + selector}
	w.startForwarder()
	_, client := w.dialForwarder()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := nsc.Request(ctx, client, nsc.RequestOptions{NetworkService: "vlan100", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: "nsm0", Labels: map[string]string{"via": "gw1"}})
	if err != nil {
		t.Fatal(err)
	}

	// The VLAN's gateway, beyond the trunk: the endpoint's address, tagged
	// by the switch's own dataplane.
	swName := w.name + "-sw"
	swPins := "/sys/fs/bpf/" + swName
	t.Cleanup(func() { _ = os.RemoveAll(swPins) })
	sd, err := kernel.New(ctx, kernel.Options{Name: swName, HostNetNS: swPath, PinDir: swPins, VLANDevices: map[string]string{"gw1": "phys0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	ipc := conn.GetContext().GetIpContext()
	gwConn := &forwarder.Conn{ID: "gateway", Payload: forwarder.PayloadEthernet, Labels: map[string]string{"via": "gw1"},
		Client: forwarder.Side{
			Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{forwarder.ParamNetNSURL: "file://" + gwPath, forwarder.ParamIfName: "gw0"}},
			IP: forwarder.IPConfig{
				Addrs:  []netip.Prefix{netip.MustParsePrefix(ipc.GetDstIpAddrs()[0])},
				Routes: []forwarder.Route{{Prefix: netip.MustParsePrefix(ipc.GetSrcIpAddrs()[0])}},
			},
		},
		Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismVLAN, Params: map[string]string{forwarder.ParamVLANID: "100"}}},
	}
	if err := sd.Connect(ctx, gwConn); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sd.Disconnect(context.Background(), "gateway") }()
	if err := w.ping(w.client, epAddr(conn)); err != nil {
		t.Fatal(err)
	}

	if conn, err = nsc.Refresh(ctx, client, conn, time.Minute); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if err := w.ping(w.client, epAddr(conn)); err != nil {
		t.Fatalf("after refresh: %v", err)
	}
	if err := nsc.Close(ctx, client, conn); err != nil {
		t.Fatal(err)
	}
	if got := nstest.Links(t, w.nodePath); !slices.Equal(got, []string{"lo", "phys0"}) {
		t.Fatalf("node links left: %v", got)
	}
	if out, _ := exec.Command("tc", "-n", w.node, "filter", "show", "dev", "phys0", "ingress").CombinedOutput(); len(out) != 0 {
		t.Fatalf("filters left on the node's phys0:\n%s", out)
	}
	if err := sd.Disconnect(ctx, "gateway"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Equal(sorted(nstest.BPFProgIDs(t)), sorted(progsBefore)) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := nstest.BPFProgIDs(t); !slices.Equal(sorted(got), sorted(progsBefore)) {
		t.Fatalf("BPF programs left: %v -> %v", progsBefore, got)
	}
}
