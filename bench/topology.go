package bench

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nsmfwd/nsmfwd/vppapi"
)

// Topology is one dataplane row: a client namespace — forwarder — endpoint
// namespace world that traffic can cross.
type Topology interface {
	// Key names the row in JSON and benchstat output.
	Key() string
	// Title names the row in tables and plots.
	Title() string
	// Unavailable returns why the row cannot be measured on this machine,
	// or "" when it can.
	Unavailable() string
	// Setup builds the world and returns the path traffic takes. Everything
	// it creates is registered with e for cleanup; the returned function
	// tears it down earlier (it must be safe to call once more at Cleanup).
	Setup(ctx context.Context, e *Env) (Path, func() error, error)
}

// Path is where traffic runs: from ClientNS to ServerAddr in ServerNS.
type Path struct {
	ClientNS, ServerNS string
	ServerAddr         netip.Addr
}

// Topologies returns every row of the dataplane table, the reference first.
func Topologies() []Topology {
	return []Topology{
		reference{},
		kernelEBPF{},
		vppRow{key: VPPAFPacketKey, title: "nsmfwd VPP, veth + af_packet", tag: "vppafp", mode: "af_packet"},
		vppRow{key: VPPAFPacketGSOKey, title: "nsmfwd VPP, veth + af_packet, GSO rings (24 MiB/conn)", tag: "vppgso", mode: "af_packet",
			env: []string{"NSM_VPP_AF_PACKET_RX_BLOCK=69632"}},
		vppRow{key: VPPAFPacketBusyKey, title: "nsmfwd VPP, veth + af_packet, interfaces polled", tag: "vppbusy", mode: "af_packet",
			env: []string{"NSM_VPP_RX_MODE=polling"}},
		vppRow{key: VPPAFPacketSleepKey, title: "nsmfwd VPP, veth + af_packet, poll sleep 100 µs", tag: "vppsleep", mode: "af_packet",
			env: []string{"NSM_VPP_POLL_SLEEP_USEC=100"}},
		vppRow{key: VPPAFXDPKey, title: "nsmfwd VPP, veth + AF_XDP", tag: "vppxdp", mode: "af_xdp"},
		vppRow{key: "vpp-tap", title: "nsmfwd VPP, tap", tag: "vpptap", mode: "tap"},
		unmeasurable{key: "vpp-memif", title: "nsmfwd VPP, memif to a VPP peer",
			reason: "iperf3 and the ping-pong tool run on a kernel stack; a memif client is a userspace one (vppapi's TestMemifPeerVPP checks it passes traffic)"},
		unmeasurable{key: "sriov", title: "SR-IOV VF", reason: "not measurable without hardware (needs an SR-IOV capable NIC)"},
	}
}

// VPPBinary returns the VPP binary named by VPP_BIN or found in PATH, or "".
func VPPBinary() string {
	bin, _ := vppapi.FindBinary(os.Getenv("VPP_BIN"))
	return bin
}

// vppRow is a VPP dataplane row: nsmfwd with NSM_DATAPLANE=vpp starting
// its own VPP (VPP_BIN) in the node namespace, KERNEL sides in mode, with
// env added to nsmfwd's environment.
type vppRow struct {
	key, title, tag, mode string
	env                   []string
}

func (v vppRow) Key() string   { return v.key }
func (v vppRow) Title() string { return v.title }
func (v vppRow) Unavailable() string {
	if VPPBinary() == "" {
		return "no VPP binary found via VPP_BIN or PATH"
	}
	if _, err := os.Stat("/dev/vhost-net"); err != nil && v.mode == "tap" {
		return "VPP's tap v2 needs /dev/vhost-net, which this host does not have"
	}
	return ""
}

func (v vppRow) Setup(ctx context.Context, e *Env) (Path, func() error, error) {
	bin := VPPBinary()
	return setupForwarderRow(ctx, e, v.tag, func(w *nsmWorld) []string {
		env := []string{"NSM_DATAPLANE=vpp", "VPP_BIN=" + bin, "NSM_VPP_KERNEL_MODE=" + v.mode,
			"NSM_VPP_RUNTIME_DIR=" + filepath.Join(w.dir, "vpp"), "NSM_VPP_MEMIF_DIR=" + filepath.Join(w.dir, "memif")}
		return append(env, v.env...)
	}, stopVPP)
}

// stopVPP stops the VPP nsmfwd started and left running (as it does on
// purpose, for the next start to adopt).
func stopVPP(w *nsmWorld) {
	b, err := os.ReadFile(filepath.Join(w.dir, "vpp", "vpp.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// unmeasurable is a row that cannot be measured in this environment.
type unmeasurable struct{ key, title, reason string }

func (u unmeasurable) Key() string         { return u.key }
func (u unmeasurable) Title() string       { return u.title }
func (u unmeasurable) Unavailable() string { return u.reason }
func (u unmeasurable) Setup(context.Context, *Env) (Path, func() error, error) {
	return Path{}, nil, errNotImplemented
}

type notImplementedError struct{}

func (notImplementedError) Error() string { return "not implemented" }

var errNotImplemented error = notImplementedError{}

// The reference: the same addresses as the nsmfwd rows, routed by a plain
// node namespace (ip_forward, proxy ARP) between two veth pairs.
type reference struct{}

// Addresses of the single traffic connection: the endpoint gets the first
// host address of its pool and the client the second, as nse assigns them.
var (
	refServer = netip.MustParseAddr("169.254.0.1")
	refClient = netip.MustParseAddr("169.254.0.2")
)

func (reference) Key() string         { return ReferenceKey }
func (reference) Title() string       { return "reference: veth + routing, no nsmfwd" }
func (reference) Unavailable() string { return "" }

func (reference) Setup(ctx context.Context, e *Env) (Path, func() error, error) {
	node, err := e.NewNS(ctx, "ref-node")
	if err != nil {
		return Path{}, nil, err
	}
	client, err := e.NewNS(ctx, "ref-client")
	if err != nil {
		return Path{}, nil, err
	}
	server, err := e.NewNS(ctx, "ref-ep")
	if err != nil {
		return Path{}, nil, err
	}
	c, s := refClient.String(), refServer.String()
	err = runAll(ctx,
		[]string{"ip", "-n", node, "link", "add", "refc0", "type", "veth", "peer", "name", "nsm0", "netns", client},
		[]string{"ip", "-n", node, "link", "add", "refe0", "type", "veth", "peer", "name", "nse0", "netns", server},
		inNS(node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"),
		inNS(node, "sysctl", "-qw", "net.ipv4.conf.refc0.proxy_arp=1", "net.ipv4.conf.refe0.proxy_arp=1"),
		[]string{"ip", "-n", node, "link", "set", "refc0", "up"},
		[]string{"ip", "-n", node, "link", "set", "refe0", "up"},
		[]string{"ip", "-n", node, "route", "add", c + "/32", "dev", "refc0"},
		[]string{"ip", "-n", node, "route", "add", s + "/32", "dev", "refe0"},
		[]string{"ip", "-n", client, "addr", "add", c + "/32", "dev", "nsm0"},
		[]string{"ip", "-n", client, "link", "set", "nsm0", "up"},
		[]string{"ip", "-n", client, "route", "add", s + "/32", "dev", "nsm0"},
		[]string{"ip", "-n", server, "addr", "add", s + "/32", "dev", "nse0"},
		[]string{"ip", "-n", server, "link", "set", "nse0", "up"},
		[]string{"ip", "-n", server, "route", "add", c + "/32", "dev", "nse0"},
	)
	if err != nil {
		return Path{}, nil, err
	}
	// The namespaces (and with them the links) go at Cleanup.
	return Path{ClientNS: client, ServerNS: server, ServerAddr: refServer}, func() error { return nil }, nil
}
