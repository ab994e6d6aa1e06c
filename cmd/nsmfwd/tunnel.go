package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// remoteOptions resolves what a dataplane needs for REMOTE mechanisms: the
// tunnel address (only when tunnels can leave the node: withUplink) and
// the VLAN devices, and logs what it got.
func remoteOptions(ctx context.Context, cfg Config, log *slog.Logger, withUplink bool) (netip.Addr, map[string]string, error) {
	var tip netip.Addr
	if withUplink {
		var err error
		if tip, err = tunnelIP(cfg.TunnelIP); err != nil {
			return tip, nil, err
		}
	}
	vlans, err := loadDeviceSelector(cfg.DeviceSelector)
	if err != nil {
		return tip, nil, err
	}
	if tip.IsValid() {
		log.InfoContext(ctx, "tunnels enabled", "tunnel_ip", tip, "vxlan_port", cfg.VXLANPort, "vlan_devices", len(vlans))
	} else {
		log.InfoContext(ctx, "no tunnels: no tunnel address (NSM_TUNNEL_IP) or, with VPP, no uplink in VPP (NSM_VPP_INIT)", "vlan_devices", len(vlans))
	}
	return tip, vlans, nil
}

// tunnelIP resolves NSM_TUNNEL_IP: an address, "none" (no REMOTE
// mechanisms), or empty for the first global address of the interface
// that holds the default route (IPv4 first, then IPv6), as
// cmd-forwarder-vpp does. No default route means no tunnel address.
func tunnelIP(raw string) (netip.Addr, error) {
	switch raw {
	case "none":
		return netip.Addr{}, nil
	case "":
	default:
		a, err := netip.ParseAddr(raw)
		if err != nil || a.IsUnspecified() || a.IsMulticast() {
			return netip.Addr{}, fmt.Errorf("config: NSM_TUNNEL_IP=%q: want a unicast IP address, none, or empty", raw)
		}
		return a.Unmap(), nil
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, family)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("tunnel address: routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !r.Dst.IP.IsUnspecified() || r.LinkIndex == 0 {
				continue
			}
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				continue
			}
			addrs, err := netlink.AddrList(l, family)
			if err != nil {
				return netip.Addr{}, fmt.Errorf("tunnel address: %w", err)
			}
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
					return ip.Unmap(), nil
				}
			}
		}
	}
	return netip.Addr{}, nil
}
