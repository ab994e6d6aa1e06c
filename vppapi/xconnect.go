package vppapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/fib_types"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_neighbor"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/l2"
	"go.fd.io/govpp/binapi/l3xc"
)

// The IP cross-connect sends everything that enters one side out of the
// other toward a fixed next hop, whose static neighbour entry carries the
// MAC of the interface on the far side. The next hop is an address no
// workload uses, so nothing depends on the connection's IP context.
var (
	xcNextHop4 = netip.MustParseAddr("169.254.0.1")
	xcNextHop6 = netip.MustParseAddr("100::1") // RFC 6666 discard prefix
)

// l2xc cross-connects a and b in both directions.
func l2xc(ctx context.Context, c *Conn, a, b interface_types.InterfaceIndex) error {
	for _, p := range [][2]interface_types.InterfaceIndex{{a, b}, {b, a}} {
		req := &l2.SwInterfaceSetL2Xconnect{RxSwIfIndex: p[0], TxSwIfIndex: p[1], Enable: true}
		if err := c.Invoke(ctx, req, &l2.SwInterfaceSetL2XconnectReply{}); err != nil {
			return fmt.Errorf("l2 xconnect %d -> %d: %w", p[0], p[1], err)
		}
	}
	return nil
}

// l2xcOff takes idx out of its L2 cross-connect (back to L3 mode).
func l2xcOff(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) error {
	req := &l2.SwInterfaceSetL2Xconnect{RxSwIfIndex: idx, Enable: false}
	if err := c.Invoke(ctx, req, &l2.SwInterfaceSetL2XconnectReply{}); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("l2 xconnect off %d: %w", idx, err)
	}
	return nil
}

func addr(a netip.Addr) ip_types.Address {
	if a.Is4() {
		return ip_types.Address{Af: ip_types.ADDRESS_IP4, Un: ip_types.AddressUnionIP4(a.As4())}
	}
	return ip_types.Address{Af: ip_types.ADDRESS_IP6, Un: ip_types.AddressUnionIP6(a.As16())}
}

func fromAddr(a ip_types.Address) netip.Addr {
	if a.Af == ip_types.ADDRESS_IP6 {
		return netip.AddrFrom16(a.Un.GetIP6())
	}
	return netip.AddrFrom4(a.Un.GetIP4())
}

// l3xcSide sends IP of both families entering from out through to; hw is
// the MAC of the far side's interface (nil: to is a point-to-point memif in
// IP mode and needs no neighbour).
//
// An NBMA interface (WireGuard) needs a next hop to choose its peer by,
// but no neighbour entry: nbma sets the synthetic next hop alone.
func l3xcSide(ctx context.Context, c *Conn, from, to interface_types.InterfaceIndex, hw net.HardwareAddr, nbma bool) error {
	for _, nh := range []netip.Addr{xcNextHop4, xcNextHop6} {
		path := fib_types.FibPath{SwIfIndex: uint32(to), Weight: 1, Proto: fib_types.FIB_API_PATH_NH_PROTO_IP4}
		if nh.Is6() {
			path.Proto = fib_types.FIB_API_PATH_NH_PROTO_IP6
		}
		if hw != nil {
			n := &ip_neighbor.IPNeighborAddDel{IsAdd: true, Neighbor: ip_neighbor.IPNeighbor{
				SwIfIndex: to, Flags: ip_neighbor.IP_API_NEIGHBOR_FLAG_STATIC | ip_neighbor.IP_API_NEIGHBOR_FLAG_NO_FIB_ENTRY,
				MacAddress: mac(hw), IPAddress: addr(nh),
			}}
			if err := c.Invoke(ctx, n, &ip_neighbor.IPNeighborAddDelReply{}); err != nil {
				return fmt.Errorf("neighbour %s on %d: %w", nh, to, err)
			}
			path.Nh.Address = addr(nh).Un
		} else if nbma {
			path.Nh.Address = addr(nh).Un
		}
		req := &l3xc.L3xcUpdate{L3xc: l3xc.L3xc{SwIfIndex: from, IsIP6: nh.Is6(), Paths: []fib_types.FibPath{path}}}
		if err := c.Invoke(ctx, req, &l3xc.L3xcUpdateReply{}); err != nil {
			return fmt.Errorf("l3xc %d -> %d (%s): %w", from, to, nh, err)
		}
	}
	return nil
}

// l3xcOff removes idx's L3 cross-connects; its neighbours go with the
// interface.
func l3xcOff(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) error {
	for _, v6 := range []bool{false, true} {
		// VPP answers INVALID_VALUE for an interface without an l3xc.
		err := c.Invoke(ctx, &l3xc.L3xcDel{SwIfIndex: idx, IsIP6: v6}, &l3xc.L3xcDelReply{})
		if err != nil && !isNoSuchEntry(err) && !errors.Is(err, api.INVALID_VALUE) {
			return fmt.Errorf("l3xc delete %d: %w", idx, err)
		}
	}
	return nil
}
