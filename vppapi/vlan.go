package vppapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/l2"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// l2VtrPop1 is VPP's L2_VTR_POP_1: strip the outer tag on input, add it
// back on output.
const l2VtrPop1 = 3

// A VLAN side is a bridge domain per (host interface, VLAN id), as NSM's
// VPP forwarder makes it: the interface's VLAN sub-interface (tag popped
// on the way in, pushed on the way out) and every client of that VLAN on
// the node, which therefore also reach each other. The sub-interface and
// the bridge domain carry the tag vlanTag; the last client's Disconnect
// removes both.

// vlanTag names the domain of (dev, vid); it is not a connection's tag.
func (d *Dataplane) vlanTag(dev string, vid uint16) string {
	return tagPrefix(d.opts.Name) + "vlan:" + dev + "." + strconv.Itoa(int(vid))
}

func (d *Dataplane) isVLANTag(tag string) bool {
	return strings.HasPrefix(tag, tagPrefix(d.opts.Name)+"vlan:")
}

// vlanDomain finds or builds the bridge domain of (dev, vid) and returns
// its id. dev must be attached to VPP (af_packet "host-<dev>", or AF_XDP
// "xdp-<dev>", as the uplink is). The caller holds tunnelMu.
func (d *Dataplane) vlanDomain(ctx context.Context, vc *Conn, dev string, vid uint16) (uint32, error) {
	tag := d.vlanTag(dev, vid)
	all, err := Dump[*interfaces.SwInterfaceDetails](ctx, vc, &interfaces.SwInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		return 0, err
	}
	var parent, sub *interfaces.SwInterfaceDetails
	for _, x := range all {
		switch {
		case x.Tag == tag:
			sub = x
		case x.InterfaceName == "host-"+dev || x.InterfaceName == "xdp-"+dev:
			parent = x
		}
	}
	if parent == nil {
		return 0, forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "host interface %s (via label) is not attached to VPP (NSM_VPP_INIT)", dev)
	}
	if sub == nil {
		var rep interfaces.CreateVlanSubifReply
		if err := vc.Invoke(ctx, &interfaces.CreateVlanSubif{SwIfIndex: parent.SwIfIndex, VlanID: uint32(vid)}, &rep); err != nil {
			return 0, fmt.Errorf("vlan %s.%d: %w", dev, vid, err)
		}
		sub = &interfaces.SwInterfaceDetails{SwIfIndex: rep.SwIfIndex}
		if err := setTag(ctx, vc, rep.SwIfIndex, tag); err != nil {
			return 0, err
		}
		if err := vc.Invoke(ctx, &l2.L2InterfaceVlanTagRewrite{SwIfIndex: rep.SwIfIndex, VtrOp: l2VtrPop1}, &l2.L2InterfaceVlanTagRewriteReply{}); err != nil {
			return 0, fmt.Errorf("vlan %s.%d tag rewrite: %w", dev, vid, err)
		}
		if err := setUp(ctx, vc, rep.SwIfIndex); err != nil {
			return 0, err
		}
	}
	bds, err := Dump[*l2.BridgeDomainDetails](ctx, vc, &l2.BridgeDomainDump{BdID: ^uint32(0), SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		return 0, err
	}
	var bd uint32
	for _, b := range bds {
		if b.BdTag == tag {
			bd = b.BdID
		}
	}
	if bd == 0 {
		var rep l2.BridgeDomainAddDelV2Reply
		req := &l2.BridgeDomainAddDelV2{BdID: ^uint32(0), Flood: true, UuFlood: true, Forward: true, Learn: true, BdTag: tag, IsAdd: true}
		if err := vc.Invoke(ctx, req, &rep); err != nil {
			return 0, fmt.Errorf("bridge domain for vlan %s.%d: %w", dev, vid, err)
		}
		bd = rep.BdID
	}
	if err := bridge(ctx, vc, sub.SwIfIndex, bd); err != nil {
		return 0, err
	}
	return bd, nil
}

// bridge puts idx into bridge domain bd.
func bridge(ctx context.Context, vc *Conn, idx interface_types.InterfaceIndex, bd uint32) error {
	req := &l2.SwInterfaceSetL2Bridge{RxSwIfIndex: idx, BdID: bd, PortType: l2.L2_API_PORT_TYPE_NORMAL, Enable: true}
	if err := vc.Invoke(ctx, req, &l2.SwInterfaceSetL2BridgeReply{}); err != nil {
		return fmt.Errorf("interface %d into bridge domain %d: %w", idx, bd, err)
	}
	return nil
}

// pruneVLAN removes the domains no client is in any more: a bridge domain
// of ours with only its sub-interface left goes, with the sub-interface.
func (d *Dataplane) pruneVLAN(ctx context.Context, vc *Conn) error {
	if len(d.opts.VLANDevices) == 0 {
		return nil
	}
	d.tunnelMu.Lock()
	defer d.tunnelMu.Unlock()
	bds, err := Dump[*l2.BridgeDomainDetails](ctx, vc, &l2.BridgeDomainDump{BdID: ^uint32(0), SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		return fmt.Errorf("prune vlan domains: %w", err)
	}
	found, err := dumpTagged(ctx, vc, tagPrefix(d.opts.Name)+"vlan:")
	if err != nil {
		return fmt.Errorf("prune vlan domains: %w", err)
	}
	var errs []error
	for _, b := range bds {
		if !d.isVLANTag(b.BdTag) {
			continue
		}
		sub, hasSub := found[b.BdTag]
		delete(found, b.BdTag) // what stays in found has no bridge domain
		clients := 0
		for _, m := range b.SwIfDetails {
			if !hasSub || m.SwIfIndex != sub.index {
				clients++
			}
		}
		if clients > 0 {
			continue
		}
		if hasSub {
			if err := vc.Invoke(ctx, &interfaces.DeleteSubif{SwIfIndex: sub.index}, &interfaces.DeleteSubifReply{}); err != nil && !isNoSuchEntry(err) {
				errs = append(errs, fmt.Errorf("delete vlan sub-interface %d: %w", sub.index, err))
				continue
			}
		}
		if err := vc.Invoke(ctx, &l2.BridgeDomainAddDelV2{BdID: b.BdID, IsAdd: false}, &l2.BridgeDomainAddDelV2Reply{}); err != nil && !isNoSuchEntry(err) {
			errs = append(errs, fmt.Errorf("delete bridge domain %d: %w", b.BdID, err))
		}
	}
	// A sub-interface whose bridge domain is gone.
	for _, sub := range found {
		if err := vc.Invoke(ctx, &interfaces.DeleteSubif{SwIfIndex: sub.index}, &interfaces.DeleteSubifReply{}); err != nil && !isNoSuchEntry(err) {
			errs = append(errs, fmt.Errorf("delete vlan sub-interface %d: %w", sub.index, err))
		}
	}
	return errors.Join(errs...)
}

// vlanSide resolves c's VLAN endpoint side to its bridge domain, building
// the domain if it is the VLAN's first client here, and lowers c.MTU to
// the host interface's.
func (d *Dataplane) vlanSide(ctx context.Context, vc *Conn, c *forwarder.Conn, bd *uint32) error {
	dev, vid, err := forwarder.VLANTarget(c, d.opts.VLANDevices, vwire.ParamsField(forwarder.SideEndpoint))
	if err != nil {
		return err
	}
	l, err := d.host.LinkByName(dev)
	if err != nil {
		return forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "host interface %s (via label): %w", dev, err)
	}
	if mtu := uint32(l.Attrs().MTU); c.MTU == 0 || c.MTU > mtu {
		c.MTU = mtu
	}
	d.tunnelMu.Lock()
	defer d.tunnelMu.Unlock()
	*bd, err = d.vlanDomain(ctx, vc, dev, vid)
	return err
}
