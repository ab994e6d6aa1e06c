package vwire

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// TunnelMTU is the largest inner MTU a tunnel of mechanism mech from
// tunnelIP carries: the MTU of the link in h's namespace that holds
// tunnelIP, minus the tunnel's overhead; 0 if no link holds it. c.MTU is
// lowered to it.
func TunnelMTU(h *netlink.Handle, tunnelIP netip.Addr, mech string, c *forwarder.Conn) (uint32, error) {
	family := netlink.FAMILY_V4
	if tunnelIP.Is6() {
		family = netlink.FAMILY_V6
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
			mtu := uint32(max(l.Attrs().MTU, 0))
			mtu -= min(mtu, forwarder.TunnelOverhead(mech, tunnelIP.Is6()))
			if c.MTU == 0 || c.MTU > mtu {
				c.MTU = mtu
			}
			return mtu, nil
		}
	}
	return 0, nil
}
