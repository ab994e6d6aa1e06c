package main

import (
	"log/slog"
	"time"
)

// Config is nsmfwd's whole configuration, read from NSM_* variables. Names
// follow cmd-forwarder-vpp where the meaning is the same.
type Config struct {
	Name             string            `env:"NSM_NAME" default:"forwarder" desc:"name of this forwarder: its NSM path segment name; scopes the objects it owns on the node"`
	NSName           string            `env:"NSM_NSNAME" default:"forwarder" desc:"network service the forwarder registers for; NSMgr finds forwarders by it"`
	Labels           map[string]string `env:"NSM_LABELS" default:"p2p:true" desc:"labels of the forwarder's registration (key:value,...), matched by NSMgr when it picks a forwarder"`
	ListenOn         string            `env:"NSM_LISTEN_ON" default:"unix:///var/lib/networkservicemesh/nsmfwd.sock" desc:"where the NSM API is served: unix:///path or tcp://host:port"`
	ConnectTo        string            `env:"NSM_CONNECT_TO" default:"unix:///var/lib/networkservicemesh/nsm.io.sock" desc:"NSMgr, the registry proxy: the forwarder registers there and finds each connection's endpoint there, then dials the endpoint's own URL. A URL without registry (an endpoint used directly) is the next hop itself. unix:///path or tcp://host:port"`
	DialTimeout      time.Duration     `env:"NSM_DIAL_TIMEOUT" default:"5s" desc:"timeout for connecting to the next hop"`
	RequestTimeout   time.Duration     `env:"NSM_REQUEST_TIMEOUT" default:"15s" desc:"upper bound on one Request, next hop included"`
	MaxTokenLifetime time.Duration     `env:"NSM_MAX_TOKEN_LIFETIME" default:"10m" desc:"lifetime of the token and expiry the forwarder puts in its own path segment"`
	LogLevel         slog.Level        `env:"NSM_LOG_LEVEL" default:"INFO" desc:"TRACE, DEBUG, INFO, WARN or ERROR"`
	LogFormat        string            `env:"NSM_LOG_FORMAT" default:"text" desc:"text or json"`
	StateDir         string            `env:"NSM_STATE_DIR" default:"/var/lib/nsmfwd" desc:"directory of the persisted connection table (one atomically written file per connection)"`
	Dataplane        string            `env:"NSM_DATAPLANE" default:"kernel" desc:"dataplane building the vWires: kernel (veth + eBPF cross-connect), vpp (VPP over its binary API), sriov (VFs) or kernel+sriov (VFs where asked, veth otherwise)"`
	BPFPinDir        string            `env:"NSM_BPF_PIN_DIR" default:"/sys/fs/bpf/nsmfwd" desc:"bpffs directory where per-connection BPF links and maps are pinned (kernel dataplane)"`
	TCAttach         string            `env:"NSM_TC_ATTACH" default:"auto" desc:"how the eBPF cross-connect attaches: auto (= tc), tc (clsact filter) or tcx (Linux 6.6+; ~10 ms per attach/detach under RTNL, see docs/architecture.md)"`
	Insecure         bool              `env:"NSM_INSECURE" default:"false" desc:"development only: plaintext gRPC, unsigned path tokens, callers identified by their path segment name; without it nsmfwd needs SPIFFE_ENDPOINT_SOCKET and refuses to start otherwise"`
	SpiffeSocket     string            `env:"SPIFFE_ENDPOINT_SOCKET" default:"" desc:"SPIFFE Workload API (e.g. unix:///run/spire/sockets/agent.sock): mTLS with X.509 SVIDs for the server and its clients, path tokens signed with the SVID"`
	SpiffeTimeout    time.Duration     `env:"NSM_SPIFFE_TIMEOUT" default:"1m" desc:"how long to wait at start for the first X.509 SVID from SPIFFE_ENDPOINT_SOCKET"`
	Prometheus       bool              `env:"PROMETHEUS" default:"false" desc:"serve Prometheus metrics (docs/metrics.md) on NSM_PROMETHEUS_LISTEN_ON"`
	PrometheusListen string            `env:"NSM_PROMETHEUS_LISTEN_ON" default:":8081" desc:"host:port of the /metrics endpoint when PROMETHEUS=true"`
	TunnelIP         string            `env:"NSM_TUNNEL_IP" default:"" desc:"this node's tunnel end for REMOTE mechanisms (VXLAN, kernel dataplane): an address, none (REMOTE mechanisms off), or empty for the first global address of the default route's interface"`
	VXLANPort        uint32            `env:"NSM_VXLAN_PORT" default:"4789" desc:"UDP port of VXLAN tunnels; the kernel dataplane uses it at both ends"`
	DeviceSelector   string            `env:"NSM_DEVICE_SELECTOR_FILE" default:"" desc:"YAML mapping host interfaces to the via label of VLAN connections (cmd-forwarder-vpp's format, see deployments/); without it VLAN is not offered"`
	MechanismPrio    []string          `env:"NSM_MECHANISM_PRIORITY" default:"" desc:"mechanism types to prefer, in order (e.g. VXLAN,KERNEL), over the caller's order and over the order the forwarder offers them to the next hop"`
}
