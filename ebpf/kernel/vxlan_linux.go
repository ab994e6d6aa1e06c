package kernel

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Offerer = (*Dataplane)(nil)

// remote reports whether the dataplane builds REMOTE mechanisms: only
// with a tunnel address.
func (d *Dataplane) remote() bool { return d.opts.TunnelIP.IsValid() }

// Offer implements forwarder.Offerer: a VXLAN offer carries our tunnel
// end, which the forwarder on the endpoint's node tunnels to; a WireGuard
// offer (IP payload only) also a port and a fresh public key.
func (d *Dataplane) Offer(typ string, payload forwarder.Payload) (map[string]string, bool) {
	if typ == forwarder.MechanismWireGuard {
		return d.offerWireGuard(payload)
	}
	if typ != forwarder.MechanismVXLAN || !d.remote() {
		return nil, true
	}
	return map[string]string{
		forwarder.ParamSrcIP:   d.opts.TunnelIP.String(),
		forwarder.ParamSrcPort: strconv.Itoa(int(d.opts.VXLANPort)),
	}, true
}

// vxlanTunnel reads a VXLAN side's tunnel. A Linux VXLAN device sends to
// the port it listens on, so both ends must use one port.
func (d *Dataplane) vxlanTunnel(side forwarder.SideKind, m forwarder.Mechanism) (forwarder.VXLANTunnel, error) {
	field := vwire.ParamsField(side)
	t, err := forwarder.ParseVXLAN(side, m, d.opts.TunnelIP, d.opts.VXLANPort, field)
	if err != nil {
		return t, err
	}
	if t.RemotePort != t.LocalPort {
		key := forwarder.ParamSrcPort
		if side == forwarder.SideEndpoint {
			key = forwarder.ParamDstPort
		}
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+key,
			"the kernel dataplane needs both tunnel ends on one VXLAN port: ours is %d, the peer's %d", t.LocalPort, t.RemotePort)
	}
	return t, nil
}

// checkVXLAN validates a VXLAN side without touching the node.
func (d *Dataplane) checkVXLAN(side forwarder.SideKind, m forwarder.Mechanism) error {
	_, err := d.vxlanTunnel(side, m)
	return err
}

// ensureVXLAN finds or creates the VXLAN device of side s and fills in the
// mechanism's parameters that are ours to give (client side: dst_ip,
// dst_port, vni; both: MTU). c.MTU is lowered to what the tunnel carries.
func (d *Dataplane) ensureVXLAN(c *Conn, s *vwire.End) error {
	m := &s.Side.Mechanism
	t, err := d.vxlanTunnel(s.Kind, *m)
	if err != nil {
		return err
	}
	tmtu, err := vwire.TunnelMTU(d.host, d.opts.TunnelIP, forwarder.MechanismVXLAN, c)
	if err != nil {
		return err
	}
	field := vwire.ParamsField(s.Kind) + forwarder.ParamVNI

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
		case ok && (t.VNI == 0 || uint32(vx.VxlanId) == t.VNI) && vx.SrcAddr.Equal(net.IP(t.Local.AsSlice())) &&
			vx.Group.Equal(net.IP(t.Remote.AsSlice())) && vx.Port == int(t.RemotePort):
			t.VNI = uint32(vx.VxlanId)
			s.Host = existing
		default:
			// A different tunnel (a refresh with new ends): rebuild it.
			if err := d.host.LinkDel(existing); err != nil && !vwire.IsNotFound(err) {
				return fmt.Errorf("connect %s: replace vxlan %s: %w", s.Kind, s.HostName, err)
			}
		}
	}
	if s.Host == nil {
		if t.VNI == 0 {
			used, err := d.vnisInUse()
			if err != nil {
				return err
			}
			if t.VNI, err = forwarder.PickVNI(t.Remote, t.Local, func(v uint32) bool { return used[v] }); err != nil {
				return err
			}
		}
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: s.HostName, MTU: int(c.MTU)},
			VxlanId:   int(t.VNI),
			SrcAddr:   net.IP(t.Local.AsSlice()),
			Group:     net.IP(t.Remote.AsSlice()),
			Port:      int(t.RemotePort),
			Learning:  false,
		}
		if err := d.host.LinkAdd(vx); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return forwarder.Errorf(forwarder.CodeAlreadyExists, field,
					"VNI %d on port %d is already used by another tunnel on this node; request again for another VNI", t.VNI, t.RemotePort)
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
		t.Answer(m, tmtu)
	} else if tmtu > 0 {
		m.Params[forwarder.ParamMTU] = strconv.Itoa(int(tmtu))
	}
	return nil
}

// vnisInUse are the VNIs of the node's VXLAN devices on our port. The
// caller holds vxlanMu.
func (d *Dataplane) vnisInUse() (map[uint32]bool, error) {
	links, err := vwire.ListLinks(d.host)
	if err != nil {
		return nil, fmt.Errorf("allocate vni: %w", err)
	}
	used := map[uint32]bool{}
	for _, l := range links {
		if vx, ok := l.(*netlink.Vxlan); ok && vx.Port == int(d.opts.VXLANPort) {
			used[uint32(vx.VxlanId)] = true
		}
	}
	return used, nil
}
