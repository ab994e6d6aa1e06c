package vwire

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// VXLAN overheads: outer Ethernet is not counted in an MTU; outer IP, UDP,
// the VXLAN header and the inner Ethernet header are.
const (
	VXLANOverhead4 = 20 + 8 + 8 + 14
	VXLANOverhead6 = 40 + 8 + 8 + 14
)

// TunnelMTU is the largest inner MTU a VXLAN tunnel from tunnelIP carries:
// the MTU of the link in h's namespace that holds tunnelIP, minus the
// overhead; 0 if no link holds it.
func TunnelMTU(h *netlink.Handle, tunnelIP netip.Addr) (uint32, error) {
	family, overhead := netlink.FAMILY_V4, VXLANOverhead4
	if tunnelIP.Is6() {
		family, overhead = netlink.FAMILY_V6, VXLANOverhead6
	}
	addrs, err := Retry(func() ([]netlink.Addr, error) { return h.AddrList(nil, family) })
	if err != nil {
		return 0, fmt.Errorf("tunnel mtu: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == tunnelIP {
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return 0, fmt.Errorf("tunnel mtu: %w", err)
			}
			return uint32(max(l.Attrs().MTU-overhead, 0)), nil
		}
	}
	return 0, nil
}
