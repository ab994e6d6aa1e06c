package kernel

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// VXLAN overheads: outer Ethernet is not counted in an MTU; outer IP, UDP
// and the VXLAN header are.
const (
	vxlanOverhead4 = 20 + 8 + 8 + 14
	vxlanOverhead6 = 40 + 8 + 8 + 14
)

var _ forwarder.Offerer = (*Dataplane)(nil)

// remote reports whether the dataplane builds REMOTE mechanisms: only
// with a tunnel address.
func (d *Dataplane) remote() bool { return d.opts.TunnelIP.IsValid() }

// Offer implements forwarder.Offerer: a VXLAN offer carries our tunnel
// end, which the forwarder on the endpoint's node tunnels to.
func (d *Dataplane) Offer(typ string) map[string]string {
	if typ != forwarder.MechanismVXLAN || !d.remote() {
		return nil
	}
	return map[string]string{
		forwarder.ParamSrcIP:   d.opts.TunnelIP.String(),
		forwarder.ParamSrcPort: strconv.Itoa(int(d.opts.VXLANPort)),
	}
}

// vxlanEnds returns the local and remote tunnel ends of a VXLAN side:
// on the client side we serve the Request (we are dst), on the endpoint
// side we sent it (we are src). The answer's dst_ip may still be empty on
// the client side: it is ours to fill.
func (d *Dataplane) vxlanEnds(side forwarder.SideKind, m forwarder.Mechanism) (local, remote netip.Addr, remotePort uint16, err error) {
	field := vwire.ParamsField(side)
	localKey, remoteKey, portKey := forwarder.ParamDstIP, forwarder.ParamSrcIP, forwarder.ParamSrcPort
	if side == forwarder.SideEndpoint {
		localKey, remoteKey, portKey = forwarder.ParamSrcIP, forwarder.ParamDstIP, forwarder.ParamDstPort
	}
	if !d.remote() {
		return local, remote, 0, forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(field, "parameters.")+"type",
			"mechanism %s needs a tunnel address and the kernel dataplane has none (NSM_TUNNEL_IP)", m.Type)
	}
	remote, err = netip.ParseAddr(m.Param(remoteKey))
	if err != nil {
		return local, remote, 0, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteKey, "missing or invalid remote tunnel address %q", m.Param(remoteKey))
	}
	if remote.Is4() != d.opts.TunnelIP.Is4() {
		return local, remote, 0, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteKey, "remote tunnel address %s and ours (%s) are of different families", remote, d.opts.TunnelIP)
	}
	local = d.opts.TunnelIP
	if v := m.Param(localKey); v != "" {
		if a, perr := netip.ParseAddr(v); perr != nil || a != local {
			return local, remote, 0, forwarder.Errorf(forwarder.CodeInvalidArgument, field+localKey, "%q is not this forwarder's tunnel address %s", v, local)
		}
	}
	remotePort = forwarder.VXLANPort
	if v := m.Param(portKey); v != "" {
		if remotePort, err = forwarder.ParsePort(v); err != nil {
			return local, remote, 0, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field + portKey, Err: err}
		}
	}
	// A Linux VXLAN device sends to the port it listens on.
	if remotePort != d.opts.VXLANPort {
		return local, remote, 0, forwarder.Errorf(forwarder.CodeInvalidArgument, field+portKey,
			"the kernel dataplane needs both tunnel ends on one VXLAN port: ours is %d, the peer's %d", d.opts.VXLANPort, remotePort)
	}
	return local, remote, remotePort, nil
}

// checkVXLAN validates a VXLAN side without touching the node. The
// endpoint side is an answer and must carry the VNI.
func (d *Dataplane) checkVXLAN(side forwarder.SideKind, m forwarder.Mechanism) error {
	if _, _, _, err := d.vxlanEnds(side, m); err != nil {
		return err
	}
	if side == forwarder.SideEndpoint {
		if _, err := forwarder.ParseVNI(m.Param(forwarder.ParamVNI)); err != nil {
			return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(side) + forwarder.ParamVNI, Err: err}
		}
	}
	return nil
}

// tunnelMTU is the largest inner MTU the uplink (the link holding the
// tunnel address) carries; 0 if that link is not found.
func (d *Dataplane) tunnelMTU() (uint32, error) {
	family, overhead := netlink.FAMILY_V4, vxlanOverhead4
	if d.opts.TunnelIP.Is6() {
		family, overhead = netlink.FAMILY_V6, vxlanOverhead6
	}
	addrs, err := vwire.Retry(func() ([]netlink.Addr, error) { return d.host.AddrList(nil, family) })
	if err != nil {
		return 0, fmt.Errorf("tunnel mtu: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == d.opts.TunnelIP {
			l, err := d.host.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("tunnel mtu: %w", err)
			}
			return uint32(max(l.Attrs().MTU-overhead, 0)), nil
		}
	}
	return 0, nil
}

// ensureVXLAN finds or creates the VXLAN device of side s and fills in the
// mechanism's parameters that are ours to give (client side: dst_ip,
// dst_port, vni; both: MTU). c.MTU is lowered to what the tunnel carries.
func (d *Dataplane) ensureVXLAN(c *Conn, s *vwire.End) error {
	m := &s.Side.Mechanism
	local, remote, port, err := d.vxlanEnds(s.Kind, *m)
	if err != nil {
		return err
	}
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	tmtu, err := d.tunnelMTU()
	if err != nil {
		return err
	}
	if tmtu > 0 && (c.MTU == 0 || c.MTU > tmtu) {
		c.MTU = tmtu
	}
	if tmtu > 0 {
		m.Params[forwarder.ParamMTU] = strconv.Itoa(int(tmtu))
	}
	field := vwire.ParamsField(s.Kind) + forwarder.ParamVNI
	var vni uint32
	if v := m.Param(forwarder.ParamVNI); v != "" {
		if vni, err = forwarder.ParseVNI(v); err != nil {
			return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field, Err: err}
		}
	}

	d.vxlanMu.Lock()
	defer d.vxlanMu.Unlock()
	existing, err := d.host.LinkByName(s.HostName)
	if err != nil && !vwire.IsNotFound(err) {
		return fmt.Errorf("connect %s: vxlan %s: %w", s.Kind, s.HostName, err)
	}
	if err == nil {
		vx, ok := existing.(*netlink.Vxlan)
		switch {
		case existing.Attrs().Alias != s.Alias:
			return forwarder.Errorf(forwarder.CodeAlreadyExists, "", "node interface %s exists and is not this connection's", s.HostName)
		case ok && (vni == 0 || uint32(vx.VxlanId) == vni) && vx.SrcAddr.Equal(net.IP(local.AsSlice())) &&
			vx.Group.Equal(net.IP(remote.AsSlice())) && vx.Port == int(port):
			vni = uint32(vx.VxlanId)
			s.Host = existing
		default:
			// A different tunnel (a refresh with new ends): rebuild it.
			if err := d.host.LinkDel(existing); err != nil && !vwire.IsNotFound(err) {
				return fmt.Errorf("connect %s: replace vxlan %s: %w", s.Kind, s.HostName, err)
			}
		}
	}
	if s.Host == nil {
		if vni == 0 {
			if s.Kind == forwarder.SideEndpoint {
				return forwarder.Errorf(forwarder.CodeInvalidArgument, field, "missing in the next hop's answer")
			}
			if vni, err = d.allocVNI(remote, local); err != nil {
				return err
			}
		}
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: s.HostName, MTU: int(c.MTU)},
			VxlanId:   int(vni),
			SrcAddr:   net.IP(local.AsSlice()),
			Group:     net.IP(remote.AsSlice()),
			Port:      int(port),
			Learning:  false,
		}
		if err := d.host.LinkAdd(vx); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return forwarder.Errorf(forwarder.CodeAlreadyExists, field,
					"VNI %d on port %d is already used by another tunnel on this node; request again for another VNI", vni, port)
			}
			return fmt.Errorf("connect %s: create vxlan %s: %w", s.Kind, s.HostName, err)
		}
		s.Created = true
		l, err := d.host.LinkByName(s.HostName)
		if err != nil {
			return fmt.Errorf("connect %s: vxlan %s: %w", s.Kind, s.HostName, err)
		}
		s.Host = l
		if err := d.host.LinkSetAlias(l, s.Alias); err != nil {
			return fmt.Errorf("connect %s: vxlan alias: %w", s.Kind, err)
		}
		// IN6_ADDR_GEN_MODE_NONE: the tunnel is a wire, not an interface
		// of the node.
		_ = d.host.LinkSetIP6AddrGenMode(l, 1)
	}
	if c.MTU > 0 && s.Host.Attrs().MTU != int(c.MTU) {
		if err := d.host.LinkSetMTU(s.Host, int(c.MTU)); err != nil {
			return fmt.Errorf("connect %s: vxlan mtu: %w", s.Kind, err)
		}
	}
	if s.Host.Attrs().Flags&net.FlagUp == 0 {
		if err := d.host.LinkSetUp(s.Host); err != nil {
			return fmt.Errorf("connect %s: vxlan up: %w", s.Kind, err)
		}
	}
	if s.Kind == forwarder.SideClient {
		m.Params[forwarder.ParamDstIP] = local.String()
		m.Params[forwarder.ParamDstPort] = strconv.Itoa(int(d.opts.VXLANPort))
	}
	m.Params[forwarder.ParamVNI] = strconv.FormatUint(uint64(vni), 10)
	return nil
}

// allocVNI picks a VNI no VXLAN device on our port uses, with NSM's
// parity rule (even when the client's tunnel end sorts first), so the two
// forwarders of a node pair never pick the same VNI for tunnels in
// opposite directions. The caller holds vxlanMu.
func (d *Dataplane) allocVNI(src, dst netip.Addr) (uint32, error) {
	links, err := vwire.ListLinks(d.host)
	if err != nil {
		return 0, fmt.Errorf("allocate vni: %w", err)
	}
	used := map[uint32]bool{}
	for _, l := range links {
		if vx, ok := l.(*netlink.Vxlan); ok && vx.Port == int(d.opts.VXLANPort) {
			used[uint32(vx.VxlanId)] = true
		}
	}
	odd := uint32(0)
	if src.Compare(dst) > 0 {
		odd = 1
	}
	for range 1000 {
		vni := (rand.Uint32N(forwarder.MaxVNI/2) * 2) | odd // #nosec G404 -- uniqueness, not secrecy
		if vni != 0 && !used[vni] {
			return vni, nil
		}
	}
	return 0, forwarder.Errorf(forwarder.CodeResourceExhausted, "", "no free VNI on port %d", d.opts.VXLANPort)
}

// errNoWireGuard declines WIREGUARD: the kernel dataplane builds no
// WireGuard tunnels (the VPP dataplane's wireguard plugin does).
func errNoWireGuard(side forwarder.SideKind) error {
	return forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(side), "parameters.")+"type",
		"the kernel dataplane does not build %s tunnels; use VXLAN, or the VPP dataplane for WireGuard", forwarder.MechanismWireGuard)
}
