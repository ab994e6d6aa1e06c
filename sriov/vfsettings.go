package sriov

import (
	"context"
	"fmt"
)

// Link states of a VF as the PF sets them (IFLA_VF_LINK_STATE_*).
const (
	VFLinkStateAuto    uint32 = 0
	VFLinkStateEnable  uint32 = 1
	VFLinkStateDisable uint32 = 2
)

// VFSettings are the settings of a VF that its PF holds and sets (through
// the PF's netlink IFLA_VF_* attributes). They survive the VF netdev and
// its driver: a VF given back with a stale VLAN or MAC carries it into its
// next user, so Close restores every one of them.
type VFSettings struct {
	MAC       string `json:"mac"`
	VLAN      int    `json:"vlan"`
	QoS       int    `json:"qos"`
	Trust     bool   `json:"trust"`
	SpoofChk  bool   `json:"spoofchk"`
	MinTxRate uint32 `json:"min_tx_rate"`
	MaxTxRate uint32 `json:"max_tx_rate"`
	LinkState uint32 `json:"link_state"`
}

// SafeVFSettings are restored when a VF's original settings could not be
// captured: no VLAN, no rate limit, spoof checking on, trust off, link
// state following the PF. The MAC is left to the caller.
func SafeVFSettings(mac string) VFSettings {
	return VFSettings{MAC: mac, SpoofChk: true, LinkState: VFLinkStateAuto}
}

func (s VFSettings) String() string {
	return fmt.Sprintf("mac=%s vlan=%d qos=%d trust=%v spoofchk=%v min_tx_rate=%d max_tx_rate=%d link_state=%d",
		s.MAC, s.VLAN, s.QoS, s.Trust, s.SpoofChk, s.MinTxRate, s.MaxTxRate, s.LinkState)
}

// UnsupportedError is what SetVF returns when every field it could set
// was set and only fields the PF's driver does not support (igb: the VF
// link state) were not. Restoring a VF reports them instead of falling
// back to safe defaults, which would undo the fields that were restored.
type UnsupportedError struct {
	Fields []string // the settings refused, e.g. "link state"
	Err    error
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("vf settings not supported by the driver: %v", e.Err)
}

func (e *UnsupportedError) Unwrap() error { return e.Err }

// PFLink reads and sets VF settings through a PF. NetlinkPF is the real
// one; tests use a recording fake (netlink's VF calls do not work on the
// veth stand-ins).
type PFLink interface {
	// VF returns the current settings of VF index vf of the PF whose
	// netdev is pf.
	VF(ctx context.Context, pf string, vf int) (VFSettings, error)
	// SetVF applies every field of s to the VF. Fields already equal may
	// be skipped. When only fields the driver does not support fail, the
	// error is an *UnsupportedError (not wrapped).
	SetVF(ctx context.Context, pf string, vf int, s VFSettings) error
}

// VFCounters are a VF's packet counters as the PF reports them
// (IFLA_VF_STATS), for VFs whose netdev is not visible (VFIO).
type VFCounters struct {
	RxPackets, RxBytes, RxDropped uint64
	TxPackets, TxBytes, TxDropped uint64
}

// PFStats is implemented by PFLinks that can read a VF's counters.
type PFStats interface {
	VFStats(ctx context.Context, pf string, vf int) (VFCounters, error)
}
