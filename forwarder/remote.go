package forwarder

import (
	"fmt"
	"net/netip"
	"strconv"
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

// Offerer is implemented by dataplanes whose endpoint-side mechanisms need
// parameters in the Request to the next hop: a REMOTE mechanism offers the
// local tunnel end (VXLAN: src_ip, src_port), which the forwarder at the
// other end needs to build its half.
type Offerer interface {
	// Offer returns the parameters to send with an offer of mechanism typ,
	// or nil.
	Offer(typ string) map[string]string
}
