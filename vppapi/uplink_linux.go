package vppapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/fib_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ip_types"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xsk"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// Uplink modes (NSM_VPP_INIT, as cmd-forwarder-vpp names them).
const (
	UplinkAFPacket = "AF_PACKET"
	UplinkAFXDP    = "AF_XDP"
	UplinkNone     = "NONE"
)

// UplinkOptions configure AttachUplink.
type UplinkOptions struct {
	// Name is the forwarder's name; the uplink's VPP interface is tagged
	// with it so that Reconcile keeps it and a restart adopts it.
	Name string
	// Mode is UplinkAFPacket, UplinkAFXDP or UplinkNone ("" = none).
	Mode string
	// Interface is the host interface; "" picks the one with the default
	// route (IPv4, else IPv6).
	Interface string
	// HostNetNS is the namespace of the interface ("" = the process's).
	HostNetNS string
	// XDPDir, when set, is where nsmfwd writes its XDP programs for VPP
	// (a directory VPP can read). An AF_XDP uplink then gets nsmfwd's
	// pinhole program instead of VPP's default one, which takes every
	// frame from the host.
	XDPDir string
	// Logger receives what was copied; nil discards.
	Logger *slog.Logger
}

// Uplink is the host interface attached to VPP.
type Uplink struct {
	HostIf string
	Index  interface_types.InterfaceIndex
	MTU    int
	Addrs  []netip.Prefix
	Routes []string
	// Protected reports that only the pinholes of live tunnels (and the
	// ICMP VPP needs) are let into VPP from the uplink.
	Protected bool
	// Gateways are the next hops of the routes copied.
	Gateways []netip.Addr
}

// uplinkTag is the tag of the uplink's VPP interface.
func uplinkTag(name string) string { return tagPrefix(name) + "uplink" }

// AttachUplink attaches the host's uplink interface to VPP by af_packet or
// AF_XDP with the host's MAC, and copies its MTU, global addresses and the
// routes through it into VPP, as the remote mechanisms need VPP to reach
// other nodes. The host keeps its own configuration. It is idempotent: an
// uplink already attached (a restart) is adopted and brought up to date.
func AttachUplink(ctx context.Context, vc *Conn, opts UplinkOptions) (*Uplink, error) {
	switch opts.Mode {
	case "", UplinkNone:
		return nil, nil
	case UplinkAFPacket, UplinkAFXDP:
	default:
		return nil, fmt.Errorf("vpp uplink: mode %q is not %s, %s or %s", opts.Mode, UplinkAFPacket, UplinkAFXDP, UplinkNone)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns, h, _, err := vwire.OpenHost(opts.HostNetNS)
	if err != nil {
		return nil, fmt.Errorf("vpp uplink: %w", err)
	}
	defer func() { h.Close(); _ = ns.Close() }()
	link, err := uplinkLink(h, opts.Interface)
	if err != nil {
		return nil, fmt.Errorf("vpp uplink: %w", err)
	}
	a := link.Attrs()
	up := &Uplink{HostIf: a.Name, MTU: a.MTU}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		addrs, err := h.AddrList(link, fam)
		if err != nil {
			return nil, fmt.Errorf("vpp uplink: addresses of %s: %w", a.Name, err)
		}
		for _, ad := range addrs {
			if ad.Scope != unix.RT_SCOPE_UNIVERSE {
				continue
			}
			if p, ok := netipPrefix(ad.IPNet); ok {
				up.Addrs = append(up.Addrs, p)
			}
		}
	}
	tag := uplinkTag(opts.Name)
	// Every interface the name owns: the uplink, and the tunnels whose
	// pinholes it opens.
	found, err := dumpTagged(ctx, vc, tagPrefix(opts.Name))
	if err != nil {
		return nil, fmt.Errorf("vpp uplink: %w", err)
	}
	v, adopted := found[tag]
	if !adopted {
		if opts.Mode == UplinkAFXDP {
			prog := ""
			if opts.XDPDir != "" {
				if _, prog, err = xsk.WriteObjects(opts.XDPDir); err != nil {
					return nil, fmt.Errorf("vpp uplink: %w", err)
				}
			}
			v, err = createAFXDP(ctx, vc, a.Name, "xdp-"+a.Name, a.HardwareAddr, 0, prog)
		} else {
			v, err = createAFPacket(ctx, vc, a.Name, a.HardwareAddr, uplinkGeometry)
		}
		if err != nil {
			return nil, fmt.Errorf("vpp uplink: %w", err)
		}
		if err := setTag(ctx, vc, v.index, tag); err != nil {
			_ = deleteIf(context.WithoutCancel(ctx), vc, v)
			return nil, fmt.Errorf("vpp uplink: %w", err)
		}
	}
	up.Index = v.index
	if err := uplinkConfigure(ctx, vc, h, link, up); err != nil {
		return nil, fmt.Errorf("vpp uplink %s: %w", a.Name, err)
	}
	ps, err := tunnelPinholes(ctx, vc, found)
	if err == nil {
		up.Protected, err = protectUplink(ctx, vc, opts.Name, ns, h, v, ps, up.Gateways)
	}
	if err != nil {
		return nil, fmt.Errorf("vpp uplink %s: %w", a.Name, err)
	}
	if !up.Protected {
		log.WarnContext(ctx, "VPP has no acl plugin: the uplink is attached without pinholes, VPP answers whatever reaches it", "host_if", a.Name)
	}
	log.InfoContext(ctx, "uplink attached to VPP", "host_if", a.Name, "mode", opts.Mode, "adopted", adopted,
		"mtu", up.MTU, "addrs", up.Addrs, "routes", up.Routes, "protected", up.Protected)
	return up, nil
}

// uplinkLink is the named link, or the one the default route leaves by.
func uplinkLink(h *netlink.Handle, name string) (netlink.Link, error) {
	if name != "" {
		return h.LinkByName(name)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, err
		}
		for _, r := range routes {
			if (r.Dst == nil || isDefault(r.Dst)) && r.LinkIndex > 0 {
				return h.LinkByIndex(r.LinkIndex)
			}
		}
	}
	return nil, errors.New("no default route: name the uplink interface")
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// uplinkConfigure copies MTU, addresses and routes to VPP's interface and
// brings it up.
func uplinkConfigure(ctx context.Context, vc *Conn, h *netlink.Handle, link netlink.Link, up *Uplink) error {
	if err := setMTU(ctx, vc, up.Index, uint32(up.MTU)); err != nil {
		return err
	}
	have := map[netip.Prefix]bool{}
	for _, v6 := range []bool{false, true} {
		ds, err := Dump[*ip.IPAddressDetails](ctx, vc, &ip.IPAddressDump{SwIfIndex: up.Index, IsIPv6: v6})
		if err != nil {
			return err
		}
		for _, d := range ds {
			have[fromVPPPrefix(ip_types.Prefix(d.Prefix))] = true
		}
	}
	for _, p := range up.Addrs {
		if have[p] {
			continue
		}
		req := &interfaces.SwInterfaceAddDelAddress{SwIfIndex: up.Index, IsAdd: true, Prefix: ip_types.AddressWithPrefix(vppPrefix(p))}
		if err := vc.Invoke(ctx, req, &interfaces.SwInterfaceAddDelAddressReply{}); err != nil && !errors.Is(err, api.ADDRESS_FOUND_FOR_INTERFACE) {
			return fmt.Errorf("address %s: %w", p, err)
		}
	}
	if err := setUp(ctx, vc, up.Index); err != nil {
		return err
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteListFiltered(fam, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("routes: %w", err)
		}
		for _, r := range routes {
			// Connected routes come with the addresses; link-local and
			// multicast stay the host's.
			if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
				continue
			}
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if fam == netlink.FAMILY_V6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			if r.Dst != nil {
				var ok bool
				if dst, ok = netipPrefix(r.Dst); !ok {
					continue
				}
			}
			if dst.Addr().Is6() && dst.Addr().IsLinkLocalUnicast() {
				continue
			}
			path := fib_types.FibPath{SwIfIndex: uint32(up.Index), Weight: 1, Proto: fib_types.FIB_API_PATH_NH_PROTO_IP4}
			if fam == netlink.FAMILY_V6 {
				path.Proto = fib_types.FIB_API_PATH_NH_PROTO_IP6
			}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok {
				path.Nh.Address = addr(gw.Unmap()).Un
				if !slices.Contains(up.Gateways, gw.Unmap()) {
					up.Gateways = append(up.Gateways, gw.Unmap())
				}
			}
			req := &ip.IPRouteAddDel{IsAdd: true, Route: ip.IPRoute{Prefix: vppPrefix(dst), Paths: []fib_types.FibPath{path}}}
			if err := vc.Invoke(ctx, req, &ip.IPRouteAddDelReply{}); err != nil {
				return fmt.Errorf("route %s: %w", dst, err)
			}
			desc := dst.String()
			if r.Gw != nil {
				desc += " via " + r.Gw.String()
			}
			up.Routes = append(up.Routes, desc)
		}
	}
	slices.Sort(up.Routes)
	return nil
}

func vppPrefix(p netip.Prefix) ip_types.Prefix {
	return ip_types.Prefix{Address: addr(p.Addr()), Len: uint8(p.Bits())}
}

func fromVPPPrefix(p ip_types.Prefix) netip.Prefix {
	return netip.PrefixFrom(fromAddr(p.Address), int(p.Len))
}
