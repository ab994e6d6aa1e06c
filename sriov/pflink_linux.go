package sriov

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// NetlinkPF is the PFLink of a real NIC: IFLA_VF_* through the PF netdev
// in the namespace of handle.
type NetlinkPF struct {
	// Handle is a netlink handle in the PF's namespace; nil means the
	// process's own namespace.
	Handle *netlink.Handle
}

var (
	_ PFLink  = (*NetlinkPF)(nil)
	_ PFStats = (*NetlinkPF)(nil)
)

func (n *NetlinkPF) h() *netlink.Handle {
	if n.Handle == nil {
		return &netlink.Handle{}
	}
	return n.Handle
}

func (n *NetlinkPF) vfInfo(pf string, vf int) (netlink.Link, netlink.VfInfo, error) {
	l, err := n.h().LinkByName(pf)
	if err != nil {
		return nil, netlink.VfInfo{}, fmt.Errorf("pf %s: %w", pf, err)
	}
	for _, v := range l.Attrs().Vfs {
		if v.ID == vf {
			return l, v, nil
		}
	}
	return nil, netlink.VfInfo{}, fmt.Errorf("pf %s reports no VF %d", pf, vf)
}

// VF implements PFLink.
func (n *NetlinkPF) VF(_ context.Context, pf string, vf int) (VFSettings, error) {
	_, v, err := n.vfInfo(pf, vf)
	if err != nil {
		return VFSettings{}, err
	}
	return VFSettings{
		MAC: v.Mac.String(), VLAN: v.Vlan, QoS: v.Qos, Trust: v.Trust != 0, SpoofChk: v.Spoofchk,
		MinTxRate: v.MinTxRate, MaxTxRate: v.MaxTxRate, LinkState: v.LinkState,
	}, nil
}

// SetVF implements PFLink. Every field is attempted; the errors are joined.
func (n *NetlinkPF) SetVF(_ context.Context, pf string, vf int, s VFSettings) error {
	l, cur, err := n.vfInfo(pf, vf)
	if err != nil {
		return err
	}
	h := n.h()
	var errs []error
	if s.MAC != "" && s.MAC != cur.Mac.String() {
		mac, err := net.ParseMAC(s.MAC)
		if err == nil {
			err = h.LinkSetVfHardwareAddr(l, vf, mac)
		}
		errs = append(errs, wrap("mac", err))
	}
	if s.VLAN != cur.Vlan || s.QoS != cur.Qos {
		errs = append(errs, wrap("vlan", h.LinkSetVfVlanQos(l, vf, s.VLAN, s.QoS)))
	}
	if s.SpoofChk != cur.Spoofchk {
		errs = append(errs, wrap("spoofchk", h.LinkSetVfSpoofchk(l, vf, s.SpoofChk)))
	}
	if s.Trust != (cur.Trust != 0) {
		errs = append(errs, wrap("trust", h.LinkSetVfTrust(l, vf, s.Trust)))
	}
	if s.MinTxRate != cur.MinTxRate || s.MaxTxRate != cur.MaxTxRate {
		errs = append(errs, wrap("rate", h.LinkSetVfRate(l, vf, int(s.MinTxRate), int(s.MaxTxRate))))
	}
	if s.LinkState != cur.LinkState {
		errs = append(errs, wrap("link state", h.LinkSetVfState(l, vf, s.LinkState)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pf %s vf %d: %w", pf, vf, err)
	}
	return nil
}

// VFStats implements PFStats.
func (n *NetlinkPF) VFStats(_ context.Context, pf string, vf int) (VFCounters, error) {
	_, v, err := n.vfInfo(pf, vf)
	if err != nil {
		return VFCounters{}, err
	}
	return VFCounters{
		RxPackets: v.RxPackets, RxBytes: v.RxBytes, RxDropped: v.RxDropped,
		TxPackets: v.TxPackets, TxBytes: v.TxBytes, TxDropped: v.TxDropped,
	}, nil
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("set %s: %w", what, err)
}
