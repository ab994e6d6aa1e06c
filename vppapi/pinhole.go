package vppapi

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/acl"
	"go.fd.io/govpp/binapi/acl_types"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/wireguard"
)

// ACLMessages are the acl plugin's messages the uplink pinholes use. They
// are optional: without the plugin the uplink is attached unprotected.
func ACLMessages() []api.Message {
	return []api.Message{
		&acl.ACLAddReplace{}, &acl.ACLAddReplaceReply{},
		&acl.ACLDel{}, &acl.ACLDelReply{},
		&acl.ACLDump{}, &acl.ACLDetails{},
		&acl.ACLInterfaceSetACLList{}, &acl.ACLInterfaceSetACLListReply{},
		&acl.ACLInterfaceListDump{}, &acl.ACLInterfaceListDetails{},
	}
}

// pinholeTag is the tag of the ACL holding a forwarder's pinholes.
func pinholeTag(name string) string { return tagPrefix(name) + "pinholes" }

// Pinhole is one flow the uplink lets into VPP: UDP from Remote to
// Local:Port, the far end of a live tunnel.
type Pinhole struct {
	Remote, Local netip.Addr
	Port          uint16
}

func (p Pinhole) String() string {
	return fmt.Sprintf("udp %s -> %s", p.Remote, netip.AddrPortFrom(p.Local, p.Port))
}

// ICMP types the uplink lets in besides the pinholes: VPP's own neighbour
// discovery, echo replies (VPP's ping) and the errors a tunnel's path
// reports (unreachable, too big, time exceeded). Echo requests stay out: the
// host, which shares the uplink's address, answers them.
var (
	icmp4Allowed = []uint16{0, 3, 11}
	icmp6Allowed = []uint16{1, 2, 3, 129, 135, 136}
)

// pinholeRules is the ACL for ps: one permit rule per flow and the ICMP
// rules. Everything else on the uplink meets the acl plugin's implicit deny
// (after any ACL the operator applied behind it).
func pinholeRules(ps []Pinhole) []acl_types.ACLRule {
	any4 := ip_types.Prefix{Address: ip_types.Address{Af: ip_types.ADDRESS_IP4}}
	any6 := ip_types.Prefix{Address: ip_types.Address{Af: ip_types.ADDRESS_IP6}}
	var rules []acl_types.ACLRule
	for _, t := range icmp4Allowed {
		rules = append(rules, acl_types.ACLRule{IsPermit: acl_types.ACL_ACTION_API_PERMIT, SrcPrefix: any4, DstPrefix: any4,
			Proto: ip_types.IP_API_PROTO_ICMP, SrcportOrIcmptypeFirst: t, SrcportOrIcmptypeLast: t, DstportOrIcmpcodeLast: 255})
	}
	for _, t := range icmp6Allowed {
		rules = append(rules, acl_types.ACLRule{IsPermit: acl_types.ACL_ACTION_API_PERMIT, SrcPrefix: any6, DstPrefix: any6,
			Proto: ip_types.IP_API_PROTO_ICMP6, SrcportOrIcmptypeFirst: t, SrcportOrIcmptypeLast: t, DstportOrIcmpcodeLast: 255})
	}
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b Pinhole) int {
		if c := a.Remote.Compare(b.Remote); c != 0 {
			return c
		}
		if c := a.Local.Compare(b.Local); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	for _, p := range slices.Compact(ps) {
		rules = append(rules, acl_types.ACLRule{
			IsPermit:  acl_types.ACL_ACTION_API_PERMIT,
			SrcPrefix: vppPrefix(netip.PrefixFrom(p.Remote, p.Remote.BitLen())),
			DstPrefix: vppPrefix(netip.PrefixFrom(p.Local, p.Local.BitLen())),
			Proto:     ip_types.IP_API_PROTO_UDP, SrcportOrIcmptypeLast: 65535,
			DstportOrIcmpcodeFirst: p.Port, DstportOrIcmpcodeLast: p.Port,
		})
	}
	return rules
}

// tunnelPinholes lists the flows of the tunnels among tagged (a forwarder
// name's interfaces, as dumpTagged gives them): its VXLAN tunnels and its
// WireGuard interfaces' peers.
func tunnelPinholes(ctx context.Context, c *Conn, tagged map[string]vppIf) ([]Pinhole, error) {
	ours := map[interface_types.InterfaceIndex]bool{}
	for _, v := range tagged {
		ours[v.index] = true
	}
	var ps []Pinhole
	if c.Supports(VXLANMessages()...) {
		ts, err := vxlanTunnels(ctx, c, ^interface_types.InterfaceIndex(0))
		if err != nil {
			return nil, err
		}
		for _, t := range ts {
			if ours[t.SwIfIndex] {
				ps = append(ps, Pinhole{Remote: fromAddr(t.DstAddress), Local: fromAddr(t.SrcAddress), Port: t.SrcPort})
			}
		}
	}
	if c.Supports(WireGuardMessages()...) {
		ifs, err := Dump[*wireguard.WireguardInterfaceDetails](ctx, c, &wireguard.WireguardInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)})
		if err != nil {
			return nil, err
		}
		local := map[interface_types.InterfaceIndex]wireguard.WireguardInterface{}
		for _, i := range ifs {
			if ours[i.Interface.SwIfIndex] {
				local[i.Interface.SwIfIndex] = i.Interface
			}
		}
		if len(local) > 0 {
			peers, err := Dump[*wireguard.WireguardPeersDetails](ctx, c, &wireguard.WireguardPeersDump{PeerIndex: ^uint32(0)})
			if err != nil {
				return nil, err
			}
			for _, p := range peers {
				if i, ok := local[p.Peer.SwIfIndex]; ok {
					ps = append(ps, Pinhole{Remote: fromAddr(p.Peer.Endpoint), Local: fromAddr(i.SrcIP), Port: i.Port})
				}
			}
		}
	}
	return ps, nil
}

// applyPinholes makes the ACL tagged pinholeTag(name) hold exactly the
// rules for ps and be the first input ACL of the interface idx, keeping any
// other ACL applied there behind it. It changes nothing that is already
// so.
func applyPinholes(ctx context.Context, c *Conn, name string, idx interface_types.InterfaceIndex, ps []Pinhole) error {
	tag := pinholeTag(name)
	all, err := Dump[*acl.ACLDetails](ctx, c, &acl.ACLDump{ACLIndex: ^uint32(0)})
	if err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	rules := pinholeRules(ps)
	index := ^uint32(0)
	same := false
	for _, a := range all {
		if a.Tag != tag {
			continue
		}
		if index == ^uint32(0) {
			index, same = a.ACLIndex, slices.Equal(a.R, rules)
			continue
		}
		// A duplicate (a crash between two calls): drop it.
		if err := dropACL(ctx, c, a.ACLIndex); err != nil {
			return err
		}
	}
	if !same {
		req := &acl.ACLAddReplace{ACLIndex: index, Tag: tag, Count: uint32(len(rules)), R: rules}
		var rep acl.ACLAddReplaceReply
		if err := c.Invoke(ctx, req, &rep); err != nil {
			return fmt.Errorf("uplink pinholes: %w", err)
		}
		index = rep.ACLIndex
	}
	lists, err := Dump[*acl.ACLInterfaceListDetails](ctx, c, &acl.ACLInterfaceListDump{SwIfIndex: idx})
	if err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	var in, out []uint32
	for _, l := range lists {
		if l.SwIfIndex == idx && int(l.NInput) <= len(l.Acls) {
			in, out = l.Acls[:l.NInput], l.Acls[l.NInput:]
		}
	}
	if len(in) > 0 && in[0] == index {
		return nil
	}
	in = append([]uint32{index}, slices.DeleteFunc(slices.Clone(in), func(i uint32) bool { return i == index })...)
	set := &acl.ACLInterfaceSetACLList{SwIfIndex: idx, NInput: uint8(len(in)), Acls: append(in, out...)}
	set.Count = uint8(len(set.Acls))
	if err := c.Invoke(ctx, set, &acl.ACLInterfaceSetACLListReply{}); err != nil {
		return fmt.Errorf("uplink pinholes on interface %d: %w", idx, err)
	}
	return nil
}

// dropACL takes the ACL off every interface it is applied to and deletes
// it.
func dropACL(ctx context.Context, c *Conn, index uint32) error {
	lists, err := Dump[*acl.ACLInterfaceListDetails](ctx, c, &acl.ACLInterfaceListDump{SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	for _, l := range lists {
		if !slices.Contains(l.Acls, index) || int(l.NInput) > len(l.Acls) {
			continue
		}
		in := slices.DeleteFunc(slices.Clone(l.Acls[:l.NInput]), func(i uint32) bool { return i == index })
		out := slices.DeleteFunc(slices.Clone(l.Acls[l.NInput:]), func(i uint32) bool { return i == index })
		set := &acl.ACLInterfaceSetACLList{SwIfIndex: l.SwIfIndex, NInput: uint8(len(in)), Acls: append(in, out...)}
		set.Count = uint8(len(set.Acls))
		if err := c.Invoke(ctx, set, &acl.ACLInterfaceSetACLListReply{}); err != nil {
			return fmt.Errorf("uplink pinholes: detach acl %d: %w", index, err)
		}
	}
	if err := c.Invoke(ctx, &acl.ACLDel{ACLIndex: index}, &acl.ACLDelReply{}); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("uplink pinholes: delete acl %d: %w", index, err)
	}
	return nil
}

// protectUplink lets into VPP from the uplink v only the flows of ps (and
// the ICMP VPP needs): by the ACL first on its input when VPP has the acl
// plugin, and, on an AF_XDP uplink with nsmfwd's pinhole program, by that
// program's map, VPP then getting the MACs of the next hops toward the far
// ends and gateways from the host.
func protectUplink(ctx context.Context, vc *Conn, name string, ns netns.NsHandle, h *netlink.Handle, v vppIf, ps []Pinhole, gateways []netip.Addr) (acl bool, err error) {
	if vc.Supports(ACLMessages()...) {
		if err := applyPinholes(ctx, vc, name, v.index, ps); err != nil {
			return false, err
		}
		acl = true
	}
	x, err := openXDPUplink(ns, h, v)
	if err != nil || x == nil {
		return acl, err
	}
	return acl, x.sync(ctx, vc, ps, gateways)
}

// syncPinholes brings the uplink's pinholes in line with the tunnels in
// VPP. Without an uplink attached by this forwarder there is nothing to
// do: the uplink is the operator's.
func (d *Dataplane) syncPinholes(ctx context.Context, vc *Conn) error {
	d.pinholeMu.Lock()
	defer d.pinholeMu.Unlock()
	tagged, err := dumpTagged(ctx, vc, tagPrefix(d.opts.Name))
	if err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	v, ok := tagged[uplinkTag(d.opts.Name)]
	if !ok {
		return nil
	}
	ps, err := tunnelPinholes(ctx, vc, tagged)
	if err != nil {
		return fmt.Errorf("uplink pinholes: %w", err)
	}
	_, err = protectUplink(ctx, vc, d.opts.Name, d.hostNS, d.host, v, ps, nil)
	return err
}

// isTunnel reports whether a VPP interface is a tunnel with a pinhole.
func isTunnel(v *vppIf) bool {
	return v != nil && (v.kind() == "vxlan" || v.kind() == "wireguard")
}
