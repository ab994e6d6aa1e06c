package sriov

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	var errs, unsupported []error
	var fields []string
	set := func(field string, err error) {
		switch {
		case err == nil:
		case errors.Is(err, unix.EOPNOTSUPP):
			fields = append(fields, field)
			unsupported = append(unsupported, wrap(field, err))
		default:
			errs = append(errs, wrap(field, err))
		}
	}
	if s.MAC != "" && s.MAC != cur.Mac.String() {
		mac, err := net.ParseMAC(s.MAC)
		if err == nil {
			err = h.LinkSetVfHardwareAddr(l, vf, mac)
		}
		set("mac", err)
	}
	if s.VLAN != cur.Vlan || s.QoS != cur.Qos {
		set("vlan", h.LinkSetVfVlanQos(l, vf, s.VLAN, s.QoS))
	}
	if s.SpoofChk != cur.Spoofchk {
		set("spoofchk", h.LinkSetVfSpoofchk(l, vf, s.SpoofChk))
	}
	if s.Trust != (cur.Trust != 0) {
		set("trust", h.LinkSetVfTrust(l, vf, s.Trust))
	}
	if s.MinTxRate != cur.MinTxRate || s.MaxTxRate != cur.MaxTxRate {
		set("rate", h.LinkSetVfRate(l, vf, int(s.MinTxRate), int(s.MaxTxRate)))
	}
	if s.LinkState != cur.LinkState {
		set("link state", h.LinkSetVfState(l, vf, s.LinkState))
	}
	if len(errs) > 0 {
		return fmt.Errorf("pf %s vf %d: %w", pf, vf, errors.Join(append(errs, unsupported...)...))
	}
	if len(unsupported) > 0 {
		return &UnsupportedError{Fields: fields, Err: fmt.Errorf("pf %s vf %d: %w", pf, vf, errors.Join(unsupported...))}
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
