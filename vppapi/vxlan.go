package vppapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/vxlan"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

var _ forwarder.Offerer = (*Dataplane)(nil)

// remote reports whether the dataplane offers VXLAN: it has a tunnel
// address and VPP has the vxlan plugin.
func (d *Dataplane) remote() bool {
	c := d.current()
	return d.opts.TunnelIP.IsValid() && c != nil && c.Supports(VXLANMessages()...)
}

// Offer implements forwarder.Offerer: a VXLAN offer carries our tunnel
// end.
func (d *Dataplane) Offer(typ string, payload forwarder.Payload) (map[string]string, bool) {
	switch {
	case typ == forwarder.MechanismWireGuard:
		return d.offerWireGuard(payload)
	case typ != forwarder.MechanismVXLAN || !d.remote():
		return nil, true
	}
	return map[string]string{
		forwarder.ParamSrcIP:   d.opts.TunnelIP.String(),
		forwarder.ParamSrcPort: strconv.Itoa(int(d.opts.VXLANPort)),
	}, true
}

// vxlanTunnels dumps VPP's VXLAN tunnels (all of them for ^0).
func vxlanTunnels(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) ([]*vxlan.VxlanTunnelV2Details, error) {
	return Dump[*vxlan.VxlanTunnelV2Details](ctx, c, &vxlan.VxlanTunnelV2Dump{SwIfIndex: idx})
}

func tunnelOf(d *vxlan.VxlanTunnelV2Details) forwarder.VXLANTunnel {
	return forwarder.VXLANTunnel{Local: fromAddr(d.SrcAddress), Remote: fromAddr(d.DstAddress), LocalPort: d.SrcPort, RemotePort: d.DstPort, VNI: d.Vni}
}

// createVXLAN creates an L2 VXLAN tunnel interface: VPP listens on
// t.LocalPort and sends to t.Remote:t.RemotePort.
func createVXLAN(ctx context.Context, c *Conn, t forwarder.VXLANTunnel) (vppIf, error) {
	req := &vxlan.VxlanAddDelTunnelV3{
		IsAdd: true, Instance: ^uint32(0),
		SrcAddress: addr(t.Local), DstAddress: addr(t.Remote), SrcPort: t.LocalPort, DstPort: t.RemotePort,
		McastSwIfIndex: ^interface_types.InterfaceIndex(0), DecapNextIndex: ^uint32(0), Vni: t.VNI,
	}
	var rep vxlan.VxlanAddDelTunnelV3Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		var e api.VPPApiError
		if errors.As(err, &e) && e == api.TUNNEL_EXIST {
			return vppIf{}, forwarder.Errorf(forwarder.CodeAlreadyExists, "", "VXLAN tunnel to %s with VNI %d exists already", t.Remote, t.VNI)
		}
		return vppIf{}, fmt.Errorf("vxlan tunnel to %s vni %d: %w", t.Remote, t.VNI, err)
	}
	return vppIf{index: rep.SwIfIndex, devType: "vxlan", name: fmt.Sprintf("vxlan_tunnel(%d)", rep.SwIfIndex)}, nil
}

// deleteVXLAN deletes the tunnel at idx; VPP deletes a tunnel by its key,
// which the dump gives back.
func deleteVXLAN(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) error {
	ds, err := vxlanTunnels(ctx, c, idx)
	if err != nil || len(ds) == 0 {
		return err
	}
	t := tunnelOf(ds[0])
	req := &vxlan.VxlanAddDelTunnelV3{
		IsAdd: false, Instance: ^uint32(0),
		SrcAddress: ds[0].SrcAddress, DstAddress: ds[0].DstAddress, SrcPort: ds[0].SrcPort, DstPort: ds[0].DstPort,
		McastSwIfIndex: ds[0].McastSwIfIndex, EncapVrfID: ds[0].EncapVrfID, DecapNextIndex: ds[0].DecapNextIndex, Vni: ds[0].Vni,
	}
	if err := c.Invoke(ctx, req, &vxlan.VxlanAddDelTunnelV3Reply{}); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("delete vxlan tunnel to %s vni %d: %w", t.Remote, t.VNI, err)
	}
	return nil
}

// vxlanSide builds a VXLAN side: a VPP VXLAN tunnel over the uplink, which
// must be in VPP (NSM_VPP_INIT). It fills in what is ours to answer
// (client side: dst_ip, dst_port, vni; both: MTU) and lowers c.MTU to
// what the tunnel carries.
func (d *Dataplane) vxlanSide(ctx context.Context, vc *Conn, c *forwarder.Conn, s *side, tag string, ipMode bool) error {
	field := vwire.ParamsField(s.kind)
	if ipMode {
		return forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.payload", "the VPP dataplane carries ETHERNET payload over VXLAN, not IP")
	}
	if !vc.Supports(VXLANMessages()...) {
		return forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "VPP %s has no vxlan plugin", vc.Version())
	}
	m := &s.s.Mechanism
	t, err := forwarder.ParseVXLAN(s.kind, *m, d.opts.TunnelIP, d.opts.VXLANPort, field)
	if err != nil {
		return err
	}
	mtu, err := vwire.TunnelMTU(d.host, d.opts.TunnelIP, forwarder.MechanismVXLAN, c)
	if err != nil {
		return err
	}
	d.tunnelMu.Lock()
	defer d.tunnelMu.Unlock()
	if s.vif != nil {
		ds, err := vxlanTunnels(ctx, vc, s.vif.index)
		if err != nil {
			return err
		}
		if len(ds) == 1 {
			cur := tunnelOf(ds[0])
			if cur.Local == t.Local && cur.Remote == t.Remote && cur.LocalPort == t.LocalPort && cur.RemotePort == t.RemotePort && (t.VNI == 0 || t.VNI == cur.VNI) {
				t.VNI = cur.VNI
			} else {
				// Another tunnel than asked for: rebuild.
				if err := deleteIf(ctx, vc, *s.vif); err != nil {
					return err
				}
				s.vif = nil
			}
		} else {
			s.vif = nil
		}
	}
	if s.vif == nil {
		if t.VNI == 0 {
			all, err := vxlanTunnels(ctx, vc, ^interface_types.InterfaceIndex(0))
			if err != nil {
				return err
			}
			used := map[uint32]bool{}
			for _, x := range all {
				if fromAddr(x.DstAddress) == t.Remote {
					used[x.Vni] = true
				}
			}
			if t.VNI, err = forwarder.PickVNI(t.Remote, t.Local, func(v uint32) bool { return used[v] }); err != nil {
				return err
			}
		}
		v, err := createVXLAN(ctx, vc, t)
		if err != nil {
			return err
		}
		s.vif, s.vifNew = &v, true
		if err := setTag(ctx, vc, v.index, tag); err != nil {
			return err
		}
	}
	if s.kind == forwarder.SideClient {
		t.Answer(m, mtu)
	} else if mtu > 0 {
		m.Params[forwarder.ParamMTU] = strconv.Itoa(int(mtu))
	}
	return nil
}
