package vwire

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

const netFlagUp = net.FlagUp

// Retry repeats a netlink dump interrupted by concurrent changes.
func Retry[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

func ListLinks(h *netlink.Handle) ([]netlink.Link, error) {
	return Retry(h.LinkList)
}

func PrefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func NetPrefix(n *net.IPNet, family int) netip.Prefix {
	if n == nil {
		if family == netlink.FAMILY_V6 {
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked()
}

// The sync functions below take fresh = true for a link created by this
// very call: it holds nothing of ours yet, so they skip the dump of what is
// there. The dumps cover the whole namespace (the kernel does not filter
// them by link), so with a thousand vWires in one client namespace they
// would make every new connection cost O(n).

// SyncAddrs makes the link hold exactly the wanted addresses, apart from
// IPv6 link-local ones, which the kernel manages. Everything else on a link
// the dataplane created is its own.
func SyncAddrs(h *netlink.Handle, l netlink.Link, wanted []netip.Prefix, fresh bool) error {
	var have []netlink.Addr
	if !fresh {
		var err error
		if have, err = Retry(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_ALL) }); err != nil {
			return fmt.Errorf("list addresses: %w", err)
		}
	}
	want := map[netip.Prefix]bool{}
	for _, p := range wanted {
		want[p] = true
	}
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip, ones)
		if ip.IsLinkLocalUnicast() && ip.Is6() {
			continue
		}
		if want[p] {
			delete(want, p)
			continue
		}
		if err := h.AddrDel(l, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %s: %w", p, err)
		}
	}
	for _, p := range wanted {
		if !want[p] {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrReplace(l, a); err != nil {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	return nil
}

type routeKey struct {
	dst netip.Prefix
	gw  netip.Addr
}

// SyncRoutes installs the wanted routes through the link and removes the
// ones the dataplane added earlier (marked with RouteProto) that are no
// longer wanted.
func SyncRoutes(h *netlink.Handle, l netlink.Link, wanted []forwarder.Route, fresh bool) error {
	idx := l.Attrs().Index
	var have []netlink.Route
	if !fresh {
		var err error
		have, err = Retry(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
		})
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
	}
	want := map[routeKey]bool{}
	for _, r := range wanted {
		want[routeKey{r.Prefix.Masked(), r.NextHop}] = true
	}
	for _, r := range have {
		if r.Protocol != RouteProto {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		k := routeKey{NetPrefix(r.Dst, r.Family), gw.Unmap()}
		if want[k] {
			continue
		}
		if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %s: %w", k.dst, err)
		}
	}
	for _, r := range wanted {
		nr := &netlink.Route{LinkIndex: idx, Dst: PrefixNet(r.Prefix.Masked()), Protocol: RouteProto}
		if r.NextHop.IsValid() {
			nr.Gw = r.NextHop.AsSlice()
		} else {
			nr.Scope = netlink.SCOPE_LINK
		}
		if err := h.RouteReplace(nr); err != nil {
			return fmt.Errorf("add route %s via %v: %w", r.Prefix, r.NextHop, err)
		}
	}
	return nil
}

// SyncNeighbors installs the wanted permanent neighbours and removes other
// permanent entries (only the dataplane adds those on its links).
func SyncNeighbors(h *netlink.Handle, l netlink.Link, wanted []forwarder.Neighbor, fresh bool) error {
	idx := l.Attrs().Index
	var have []netlink.Neigh
	if !fresh {
		var err error
		if have, err = Retry(func() ([]netlink.Neigh, error) { return h.NeighList(idx, netlink.FAMILY_ALL) }); err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
	}
	want := map[netip.Addr]bool{}
	for _, n := range wanted {
		want[n.IP.Unmap()] = true
	}
	for _, n := range have {
		if n.State&netlink.NUD_PERMANENT == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(n.IP)
		if want[ip.Unmap()] {
			continue
		}
		if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete neighbour %s: %w", ip, err)
		}
	}
	for _, n := range wanted {
		mac, err := net.ParseMAC(n.MAC)
		if err != nil {
			return forwarder.Errorf(forwarder.CodeInvalidArgument, "", "neighbour %s: %w", n.IP, err)
		}
		fam := netlink.FAMILY_V4
		if n.IP.Is6() && !n.IP.Is4In6() {
			fam = netlink.FAMILY_V6
		}
		ne := &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: n.IP.Unmap().AsSlice(), HardwareAddr: mac}
		if err := h.NeighSet(ne); err != nil {
			return fmt.Errorf("set neighbour %s: %w", n.IP, err)
		}
	}
	return nil
}
