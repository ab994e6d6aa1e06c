package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/nsmfwd/nsmfwd/ebpf/xconnect"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// A VLAN side leaves by a host device (the trunk) that every VLAN
// connection through it shares. The connection's cross-connect program
// tags what its client sends and, on the trunk's ingress, takes the frames
// of its VLAN addressed to its client (and a copy of broadcast and
// multicast), passing the rest on to the next connection's program. The
// kernel needs no 802.1Q module for it. Clients of one VLAN on the same
// node reach each other only if the physical network sends their frames
// back (hairpin).

// vlanDomain is a VLAN side's trunk device and VLAN id.
type vlanDomain struct {
	parent string
	vid    uint16
}

// vlanTarget resolves the domain of c's VLAN endpoint side.
func (d *Dataplane) vlanTarget(c *Conn) (vlanDomain, error) {
	dev, vid, err := forwarder.VLANTarget(c, d.opts.VLANDevices, vwire.ParamsField(forwarder.SideEndpoint))
	return vlanDomain{parent: dev, vid: vid}, err
}

// checkVLAN validates a VLAN endpoint side without touching the node.
func (d *Dataplane) checkVLAN(side forwarder.SideKind, m forwarder.Mechanism) error {
	if side != forwarder.SideEndpoint || len(d.opts.VLANDevices) == 0 {
		return forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(side), "parameters.")+"type",
			"mechanism %q is not one of %v", m.Type, d.Mechanisms(side))
	}
	if _, err := forwarder.ParseVLANID(m.Param(forwarder.ParamVLANID)); err != nil {
		return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(side) + forwarder.ParamVLANID, Err: err}
	}
	return nil
}

// trunk returns dom's device.
func (d *Dataplane) trunk(dom vlanDomain) (netlink.Link, error) {
	p, err := d.host.LinkByName(dom.parent)
	if err != nil {
		if vwire.IsNotFound(err) {
			return nil, forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "VLAN device %s (via label) does not exist on the node", dom.parent)
		}
		return nil, fmt.Errorf("vlan device %s: %w", dom.parent, err)
	}
	return p, nil
}

// trunkIfindexes are the ifindexes of the configured VLAN devices that
// exist: where a connection's filter may sit.
func (d *Dataplane) trunkIfindexes() []int {
	var out []int
	seen := map[string]bool{}
	for _, name := range d.opts.VLANDevices {
		if seen[name] {
			continue
		}
		seen[name] = true
		if l, err := d.host.LinkByName(name); err == nil {
			out = append(out, l.Attrs().Index)
		}
	}
	return out
}

// removeXConnect removes a connection's program: its pins, and its filter
// on every trunk (the veth ends take theirs with them).
func (d *Dataplane) removeXConnect(pinDir string) error {
	var errs []error
	for _, ifindex := range d.trunkIfindexes() {
		o := d.xopts(pinDir)
		o.SharedIfindex = ifindex
		errs = append(errs, xconnect.Remove(o, ifindex))
	}
	errs = append(errs, xconnect.Remove(d.xopts(pinDir)))
	return errors.Join(errs...)
}
