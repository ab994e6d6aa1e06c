package vppapi

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_neighbor"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xsk"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
)

// pinholeProgName is xskpinhole's program name as the kernel keeps it
// (15 characters).
const pinholeProgName = "nsmfwd_xsk_pinh"

// xdpUplink is an uplink attached by AF_XDP with nsmfwd's pinhole program:
// only the pinholes' flows reach VPP, so VPP never sees ARP or neighbour
// discovery and learns the MACs it sends to from the host.
type xdpUplink struct {
	ns     netns.NsHandle
	h      *netlink.Handle
	link   netlink.Link
	progID uint32
	index  interface_types.InterfaceIndex
}

// openXDPUplink returns the AF_XDP uplink v if nsmfwd's pinhole program is
// attached to its host interface, or nil (AF_PACKET, or VPP's default
// program: VPP then sees every frame and resolves neighbours itself).
func openXDPUplink(ns netns.NsHandle, h *netlink.Handle, v vppIf) (*xdpUplink, error) {
	if v.kind() != "af_xdp" {
		return nil, nil
	}
	link, err := h.LinkByName(strings.TrimPrefix(v.name, "xdp-"))
	if err != nil {
		return nil, fmt.Errorf("uplink %s: %w", v.name, err)
	}
	x := link.Attrs().Xdp
	if x == nil || x.ProgId == 0 {
		return nil, nil
	}
	name, err := xsk.ProgramName(x.ProgId)
	if err != nil || name != pinholeProgName {
		return nil, err
	}
	return &xdpUplink{ns: ns, h: h, link: link, progID: x.ProgId, index: v.index}, nil
}

// sync opens the pinholes in the XDP program's map and gives VPP the MAC
// of the next hop toward each far end, and of each of gateways.
func (u *xdpUplink) sync(ctx context.Context, vc *Conn, ps []Pinhole, gateways []netip.Addr) error {
	flows := make([]xsk.Flow, len(ps))
	for i, p := range ps {
		flows[i] = xsk.Flow{Remote: p.Remote, Port: p.Port}
	}
	if err := xsk.SyncPinholes(u.progID, flows); err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	want := map[netip.Addr]bool{}
	for _, p := range ps {
		want[p.Remote] = true
	}
	for _, g := range gateways {
		want[g] = true
	}
	for ip := range want {
		if err := u.mirrorNeighbor(ctx, vc, ip); err != nil {
			return err
		}
	}
	return nil
}

// mirrorNeighbor gives VPP the host's neighbour entry for the next hop
// toward ip, making the host resolve it first if it has none.
func (u *xdpUplink) mirrorNeighbor(ctx context.Context, vc *Conn, ip netip.Addr) error {
	routes, err := u.h.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return fmt.Errorf("uplink: no route to %s: %w", ip, err)
	}
	if routes[0].LinkIndex != u.link.Attrs().Index {
		return nil // not reached through the uplink
	}
	nh := ip
	if gw, ok := netip.AddrFromSlice(routes[0].Gw); ok {
		nh = gw.Unmap()
	}
	hw, err := u.neighbor(nh)
	if err != nil {
		return err
	}
	n := &ip_neighbor.IPNeighborAddDel{IsAdd: true, Neighbor: ip_neighbor.IPNeighbor{
		SwIfIndex: u.index, Flags: ip_neighbor.IP_API_NEIGHBOR_FLAG_STATIC, MacAddress: mac(hw), IPAddress: addr(nh),
	}}
	if err := vc.Invoke(ctx, n, &ip_neighbor.IPNeighborAddDelReply{}); err != nil {
		return fmt.Errorf("uplink neighbour %s: %w", nh, err)
	}
	return nil
}

const nudValid = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT | unix.NUD_NOARP

// neighbor is the host's MAC for nh on the uplink. Without an entry, a
// datagram to nh's discard port makes the host resolve it; it is waited
// for up to 2 s.
func (u *xdpUplink) neighbor(nh netip.Addr) (net.HardwareAddr, error) {
	family := netlink.FAMILY_V4
	if nh.Is6() {
		family = netlink.FAMILY_V6
	}
	lookup := func() net.HardwareAddr {
		ns, err := u.h.NeighList(u.link.Attrs().Index, family)
		if err != nil {
			return nil
		}
		for _, n := range ns {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == nh && n.State&nudValid != 0 && len(n.HardwareAddr) == 6 {
				return n.HardwareAddr
			}
		}
		return nil
	}
	if hw := lookup(); hw != nil {
		return hw, nil
	}
	probe := func() error {
		return inetns.Do(u.ns, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(nh, 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte{0})
			return err
		})
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if err := probe(); err != nil {
			return nil, fmt.Errorf("uplink: resolve %s: %w", nh, err)
		}
		for range 10 {
			time.Sleep(20 * time.Millisecond)
			if hw := lookup(); hw != nil {
				return hw, nil
			}
		}
	}
	return nil, fmt.Errorf("uplink: the host does not resolve %s (no neighbour entry after 2 s)", nh)
}
