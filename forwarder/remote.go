package forwarder

import (
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
)

// NSM's REMOTE mechanisms: type strings and parameter keys, equal to the
// constants in github.com/networkservicemesh/api's vxlan, vlan and common
// packages. In a VXLAN mechanism src_* is the tunnel end of the forwarder
// that sent the Request (the client's node) and dst_* that of the
// forwarder that serves it (the endpoint's node).
const (
	MechanismVXLAN     = "VXLAN"
	MechanismVLAN      = "VLAN"
	MechanismWireGuard = "WIREGUARD"

	ParamSrcIP   = "src_ip"
	ParamDstIP   = "dst_ip"
	ParamSrcPort = "src_port"
	ParamDstPort = "dst_port"
	ParamVNI     = "vni"
	ParamMTU     = "MTU"
	ParamVLANID  = "vlan-id"
	// ParamSrcPublicKey and ParamDstPublicKey are WireGuard public keys
	// (base64) of the requesting and the serving forwarder.
	ParamSrcPublicKey = "src_public_key"
	ParamDstPublicKey = "dst_public_key"

	// VXLANPort is IANA's VXLAN port, NSM's default.
	VXLANPort = 4789
	// MaxVNI is the largest 24-bit VXLAN network identifier.
	MaxVNI = 1<<24 - 1
)

// VXLANMechanism is the spec of NSM's VXLAN mechanism. Each parameter is
// checked when present; which must be present depends on the side and is
// the dataplane's business (a Request carries src_* only, the answer all).
func VXLANMechanism() MechanismSpec {
	return MechanismSpec{Type: MechanismVXLAN, Cls: ClsRemote, Validate: validateVXLAN}
}

// WireGuardMechanism is the spec of NSM's WIREGUARD mechanism (IP payload;
// src_/dst_ addresses, ports and base64 public keys, each checked when
// present).
func WireGuardMechanism() MechanismSpec {
	return MechanismSpec{Type: MechanismWireGuard, Cls: ClsRemote, Validate: func(m Mechanism, field string) error {
		if err := validateVXLAN(Mechanism{Params: map[string]string{
			ParamSrcIP: m.Params[ParamSrcIP], ParamDstIP: m.Params[ParamDstIP],
			ParamSrcPort: m.Params[ParamSrcPort], ParamDstPort: m.Params[ParamDstPort], ParamMTU: m.Params[ParamMTU],
		}}, field); err != nil {
			return err
		}
		for _, k := range []string{ParamSrcPublicKey, ParamDstPublicKey} {
			if v := m.Params[k]; v != "" {
				if b, err := base64.StdEncoding.DecodeString(v); err != nil || len(b) != 32 {
					return Errorf(CodeInvalidArgument, field+".parameters."+k, "%q is not a base64 WireGuard key", v)
				}
			}
		}
		return nil
	}}
}

// VLANMechanism is the spec of NSM's VLAN mechanism (toward an endpoint
// on the physical network; vlan-id 1–4094).
func VLANMechanism() MechanismSpec {
	return MechanismSpec{Type: MechanismVLAN, Cls: ClsRemote, Validate: func(m Mechanism, field string) error {
		if v, ok := m.Params[ParamVLANID]; ok {
			if _, err := ParseVLANID(v); err != nil {
				return &Error{Code: CodeInvalidArgument, Field: field + ".parameters." + ParamVLANID, Err: err}
			}
		}
		return nil
	}}
}

func validateVXLAN(m Mechanism, field string) error {
	p := field + ".parameters."
	for _, k := range []string{ParamSrcIP, ParamDstIP} {
		if v, ok := m.Params[k]; ok && v != "" {
			if _, err := netip.ParseAddr(v); err != nil {
				return Errorf(CodeInvalidArgument, p+k, "%q is not an IP address", v)
			}
		}
	}
	for _, k := range []string{ParamSrcPort, ParamDstPort} {
		if v, ok := m.Params[k]; ok && v != "" {
			if _, err := ParsePort(v); err != nil {
				return &Error{Code: CodeInvalidArgument, Field: p + k, Err: err}
			}
		}
	}
	if v, ok := m.Params[ParamVNI]; ok && v != "" {
		if _, err := ParseVNI(v); err != nil {
			return &Error{Code: CodeInvalidArgument, Field: p + ParamVNI, Err: err}
		}
	}
	if v, ok := m.Params[ParamMTU]; ok && v != "" {
		if _, err := strconv.ParseUint(v, 10, 32); err != nil {
			return Errorf(CodeInvalidArgument, p+ParamMTU, "%q is not an MTU", v)
		}
	}
	return nil
}

// ParsePort parses a UDP port parameter (1–65535).
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a UDP port (1-65535)", s)
	}
	return uint16(n), nil
}

// ParseVNI parses a VXLAN network identifier (1–2^24-1).
func ParseVNI(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > MaxVNI {
		return 0, fmt.Errorf("%q is not a VNI (1-%d)", s, MaxVNI)
	}
	return uint32(n), nil
}

// ParseVLANID parses an 802.1Q VLAN id (1–4094).
func ParseVLANID(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || n > 4094 {
		return 0, fmt.Errorf("%q is not a VLAN id (1-4094)", s)
	}
	return uint16(n), nil
}

// ViaLabel is the connection label that names, through a forwarder's
// device selector (NSM_DEVICE_SELECTOR_FILE), the host interface a VLAN
// side leaves by, as in NSM's forwarders.
const ViaLabel = "via"

// VLANTarget resolves c's VLAN endpoint side to the host interface its via
// label selects in devices and its VLAN id; field prefixes the endpoint
// mechanism's parameter fields in errors.
func VLANTarget(c *Conn, devices map[string]string, field string) (dev string, vid uint16, err error) {
	if c.Payload == PayloadIP {
		return "", 0, Errorf(CodeInvalidArgument, "connection.payload", "VLAN carries ETHERNET payload, not IP")
	}
	if vid, err = ParseVLANID(c.Endpoint.Mechanism.Param(ParamVLANID)); err != nil {
		return "", 0, &Error{Code: CodeInvalidArgument, Field: field + ParamVLANID, Err: err}
	}
	via := c.Labels[ViaLabel]
	dev, ok := devices[via]
	if !ok {
		return "", 0, Errorf(CodeInvalidArgument, "connection.labels."+ViaLabel,
			"no host interface for via=%q in the device selector (NSM_DEVICE_SELECTOR_FILE)", via)
	}
	return dev, vid, nil
}

// Offerer is implemented by dataplanes whose endpoint-side mechanisms need
// parameters in the Request to the next hop: a REMOTE mechanism offers the
// local tunnel end (VXLAN: src_ip, src_port; WireGuard also a public key),
// which the forwarder at the other end needs to build its half.
type Offerer interface {
	// Offer returns the parameters to send with an offer of mechanism typ
	// for a connection carrying payload; ok false: do not offer typ for
	// it (WireGuard carries IP only).
	Offer(typ string, payload Payload) (params map[string]string, ok bool)
}

// TunnelOverhead is what a tunnel of mechanism mech adds to each packet as
// an MTU counts it (outer IP, UDP, the tunnel's header and, for VXLAN, the
// inner Ethernet header); 0 for a mechanism that is not a tunnel.
func TunnelOverhead(mech string, v6 bool) uint32 {
	var o uint32
	switch mech {
	case MechanismVXLAN:
		o = 50
	case MechanismWireGuard:
		o = 80 // as NSM counts it
	default:
		return 0
	}
	if v6 {
		o += 20
	}
	return o
}

// VXLANTunnel is one forwarder's view of a VXLAN side.
type VXLANTunnel struct {
	Local, Remote         netip.Addr
	LocalPort, RemotePort uint16
	// VNI is 0 when the serving side has yet to pick it.
	VNI uint32
}

// ParseVXLAN reads the tunnel of a VXLAN side. On the client side we serve
// the Request (we are dst_*: dst_ip may still be empty, ours to fill); on
// the endpoint side we sent it (we are src_*). tunnelIP and port are ours;
// field prefixes error fields ("connection.mechanism.parameters.").
func ParseVXLAN(side SideKind, m Mechanism, tunnelIP netip.Addr, port uint16, field string) (VXLANTunnel, error) {
	localKey, remoteKey, portKey := ParamDstIP, ParamSrcIP, ParamSrcPort
	if side == SideEndpoint {
		localKey, remoteKey, portKey = ParamSrcIP, ParamDstIP, ParamDstPort
	}
	t := VXLANTunnel{Local: tunnelIP, LocalPort: port, RemotePort: VXLANPort}
	if !tunnelIP.IsValid() {
		return t, Errorf(CodeInvalidArgument, strings.TrimSuffix(field, "parameters.")+"type",
			"mechanism %s needs a tunnel address and the forwarder has none (NSM_TUNNEL_IP)", m.Type)
	}
	var err error
	if t.Remote, err = netip.ParseAddr(m.Param(remoteKey)); err != nil {
		return t, Errorf(CodeInvalidArgument, field+remoteKey, "missing or invalid remote tunnel address %q", m.Param(remoteKey))
	}
	t.Remote = t.Remote.Unmap()
	if t.Remote.Is4() != tunnelIP.Is4() {
		return t, Errorf(CodeInvalidArgument, field+remoteKey, "remote tunnel address %s and ours (%s) are of different families", t.Remote, tunnelIP)
	}
	if v := m.Param(localKey); v != "" {
		if a, perr := netip.ParseAddr(v); perr != nil || a.Unmap() != tunnelIP {
			return t, Errorf(CodeInvalidArgument, field+localKey, "%q is not this forwarder's tunnel address %s", v, tunnelIP)
		}
	}
	if v := m.Param(portKey); v != "" {
		if t.RemotePort, err = ParsePort(v); err != nil {
			return t, &Error{Code: CodeInvalidArgument, Field: field + portKey, Err: err}
		}
	}
	if v := m.Param(ParamVNI); v != "" {
		if t.VNI, err = ParseVNI(v); err != nil {
			return t, &Error{Code: CodeInvalidArgument, Field: field + ParamVNI, Err: err}
		}
	}
	if side == SideEndpoint && t.VNI == 0 {
		return t, Errorf(CodeInvalidArgument, field+ParamVNI, "missing in the next hop's answer")
	}
	return t, nil
}

// Answer writes what the serving forwarder tells the client's: its own
// tunnel end, the VNI and the MTU the tunnel carries (0: unknown).
func (t VXLANTunnel) Answer(m *Mechanism, mtu uint32) {
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	m.Params[ParamDstIP] = t.Local.String()
	m.Params[ParamDstPort] = strconv.Itoa(int(t.LocalPort))
	m.Params[ParamVNI] = strconv.FormatUint(uint64(t.VNI), 10)
	if mtu > 0 {
		m.Params[ParamMTU] = strconv.Itoa(int(mtu))
	}
}

// PickVNI returns a random VNI that used does not report, following NSM's
// parity rule: even when the client's tunnel end (src) sorts first, odd
// otherwise, so two forwarders serving each other's Requests never pick
// the same VNI for a pair of nodes.
func PickVNI(src, dst netip.Addr, used func(uint32) bool) (uint32, error) {
	odd := uint32(0)
	if src.Compare(dst) > 0 {
		odd = 1
	}
	for range 1000 {
		vni := (rand.Uint32N(MaxVNI/2) * 2) | odd // #nosec G404 -- uniqueness, not secrecy
		if vni != 0 && !used(vni) {
			return vni, nil
		}
	}
	return 0, Errorf(CodeResourceExhausted, "", "no free VNI")
}
