package vwire

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
)

// RouteProto marks the routes a dataplane adds, so a refresh (even in a
// new process) can tell them from routes the kernel or others added.
const RouteProto netlink.RouteProtocol = 0x6e // 'n'

// ParamsField is the request path of one side's mechanism parameters, for
// error fields.
func ParamsField(side forwarder.SideKind) string {
	if side == forwarder.SideEndpoint {
		return "endpoint.connection.mechanism.parameters."
	}
	return "connection.mechanism.parameters."
}

// ResolveNetNS opens the namespace a side's mechanism names.
func ResolveNetNS(side forwarder.SideKind, m forwarder.Mechanism) (netns.NsHandle, error) {
	field := ParamsField(side) + forwarder.ParamNetNSURL
	raw := m.Param(forwarder.ParamNetNSURL)
	if raw == "" {
		return netns.None(), forwarder.Errorf(forwarder.CodeInvalidArgument, field, "missing network namespace URL")
	}
	ref, err := forwarder.ParseNetNSURL(raw)
	if err != nil {
		return netns.None(), &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field, Err: err}
	}
	h, err := inetns.Resolve(ref)
	if err != nil {
		if fe, ok := errors.AsType[*forwarder.Error](err); ok && fe.Field == "" {
			return h, &forwarder.Error{Code: fe.Code, Field: field, Err: fe.Err}
		}
		return h, err
	}
	return h, nil
}

// IsNotFound reports whether err says a link does not exist.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// End is one side of a vWire as a dataplane builds it: the side's
// namespace and netlink handle, and the veth pair whose peer sits in it.
type End struct {
	Kind     forwarder.SideKind
	Side     *forwarder.Side
	NS       netns.NsHandle
	NL       *netlink.Handle // in NS
	HostName string          // the host end's name
	IfName   string          // the peer's name in NS
	Alias    string          // set on both ends
	Host     netlink.Link
	Peer     netlink.Link
	Created  bool // the pair was created by this call
	SameNS   bool // the peer lives in the host namespace
}

// Close releases the namespace and netlink handles.
func (s *End) Close() {
	if s.NL != nil {
		s.NL.Close()
	}
	// 0 is an End whose namespace was never resolved, not a descriptor
	// to close (it would be the process's stdin).
	if s.NS.IsOpen() && s.NS != 0 {
		_ = s.NS.Close()
	}
}

// EnsurePair finds or creates the veth pair of one side.
func (s *End) EnsurePair(hostNL *netlink.Handle, mtu uint32) error {
	host, err := hostNL.LinkByName(s.HostName)
	if err != nil && !IsNotFound(err) {
		return fmt.Errorf("connect %s: host end %s: %w", s.Kind, s.HostName, err)
	}
	peer, perr := s.NL.LinkByName(s.IfName)
	if perr != nil && !IsNotFound(perr) {
		return fmt.Errorf("connect %s: link %s: %w", s.Kind, s.IfName, perr)
	}
	if host != nil {
		// Intact only if the peer in the wanted namespace is this host
		// end's peer; otherwise (namespace or name changed, peer deleted)
		// start over.
		if host.Attrs().Alias == s.Alias && peer != nil && peer.Attrs().Alias == s.Alias &&
			peer.Attrs().ParentIndex == host.Attrs().Index && host.Attrs().ParentIndex == peer.Attrs().Index {
			s.Host, s.Peer = host, peer
			return nil
		}
		if host.Attrs().Alias != s.Alias {
			return forwarder.Errorf(forwarder.CodeAlreadyExists, "", "host interface %s exists and is not owned by this connection", s.HostName)
		}
		if err := hostNL.LinkDel(host); err != nil && !IsNotFound(err) {
			return fmt.Errorf("connect %s: delete stale host end %s: %w", s.Kind, s.HostName, err)
		}
		if peer, perr = s.NL.LinkByName(s.IfName); perr != nil && !IsNotFound(perr) {
			return fmt.Errorf("connect %s: link %s: %w", s.Kind, s.IfName, perr)
		}
	}
	if peer != nil {
		if peer.Attrs().Alias != s.Alias {
			return forwarder.Errorf(forwarder.CodeAlreadyExists, ParamsField(s.Kind)+forwarder.ParamIfName,
				"interface %q already exists in network namespace %s", s.IfName, s.Side.Mechanism.Param(forwarder.ParamNetNSURL))
		}
		if err := s.NL.LinkDel(peer); err != nil && !IsNotFound(err) {
			return fmt.Errorf("connect %s: delete stale %s: %w", s.Kind, s.IfName, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostName, Alias: s.Alias, MTU: int(mtu)},
		PeerName:      s.IfName,
		PeerNamespace: netlink.NsFd(int(s.NS)),
		PeerMTU:       mtu,
	}
	if err := hostNL.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return forwarder.Errorf(forwarder.CodeAlreadyExists, ParamsField(s.Kind)+forwarder.ParamIfName,
				"interface %q or %q already exists", s.IfName, s.HostName)
		}
		return fmt.Errorf("connect %s: create veth %s/%s: %w", s.Kind, s.HostName, s.IfName, err)
	}
	s.Created = true
	if s.Host, err = hostNL.LinkByName(s.HostName); err != nil {
		return fmt.Errorf("connect %s: host end %s: %w", s.Kind, s.HostName, err)
	}
	if s.Host.Attrs().Alias != s.Alias { // LinkAdd does not set a veth's alias
		if err := hostNL.LinkSetAlias(s.Host, s.Alias); err != nil {
			return fmt.Errorf("connect %s: host end alias: %w", s.Kind, err)
		}
	}
	if s.Peer, err = s.NL.LinkByName(s.IfName); err != nil {
		return fmt.Errorf("connect %s: link %s: %w", s.Kind, s.IfName, err)
	}
	return nil
}

// ConfigureHost brings the host end up; no IPv6 link-local address or
// autoconf on it: it is a wire, not an interface of the host.
func (s *End) ConfigureHost(hostNL *netlink.Handle, mtu uint32) error {
	a := s.Host.Attrs()
	if s.Created {
		// IN6_ADDR_GEN_MODE_NONE; fails harmlessly where IPv6 is off.
		_ = hostNL.LinkSetIP6AddrGenMode(s.Host, 1)
	}
	if mtu > 0 && a.MTU != int(mtu) {
		if err := hostNL.LinkSetMTU(s.Host, int(mtu)); err != nil {
			return fmt.Errorf("connect %s: host end mtu: %w", s.Kind, err)
		}
	}
	if a.Flags&netFlagUp == 0 {
		if err := hostNL.LinkSetUp(s.Host); err != nil {
			return fmt.Errorf("connect %s: host end up: %w", s.Kind, err)
		}
	}
	return nil
}

// ConfigurePeer applies alias, MTU, ARP mode, state and L3 settings to the
// in-namespace end. flipped reports an ARP mode change (payload change),
// which needs the program reloaded.
func (s *End) ConfigurePeer(mtu uint32, ipMode, syncL3 bool) (flipped bool, err error) {
	h, l := s.NL, s.Peer
	a := l.Attrs()
	if a.Alias != s.Alias {
		if err := h.LinkSetAlias(l, s.Alias); err != nil {
			return false, fmt.Errorf("connect %s: alias: %w", s.Kind, err)
		}
	}
	if mtu > 0 && a.MTU != int(mtu) {
		if err := h.LinkSetMTU(l, int(mtu)); err != nil {
			return false, fmt.Errorf("connect %s: mtu: %w", s.Kind, err)
		}
	}
	noarp := a.RawFlags&unix.IFF_NOARP != 0
	if noarp != ipMode {
		flipped = !s.Created
		if ipMode {
			err = h.LinkSetARPOff(l)
		} else {
			err = h.LinkSetARPOn(l)
		}
		if err != nil {
			return false, fmt.Errorf("connect %s: arp mode: %w", s.Kind, err)
		}
	}
	if a.Flags&netFlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return false, fmt.Errorf("connect %s: link up: %w", s.Kind, err)
		}
	}
	if !syncL3 {
		return flipped, nil
	}
	if err := SyncAddrs(h, l, s.Side.IP.Addrs, s.Created); err != nil {
		return false, fmt.Errorf("connect %s: %w", s.Kind, err)
	}
	if err := SyncRoutes(h, l, s.Side.IP.Routes, s.Created); err != nil {
		return false, fmt.Errorf("connect %s: %w", s.Kind, err)
	}
	if err := SyncNeighbors(h, l, s.Side.IP.Neighbors, s.Created); err != nil {
		return false, fmt.Errorf("connect %s: %w", s.Kind, err)
	}
	return flipped, nil
}

// OpenHost opens the node namespace at path ("" = the process's own, self
// true) and a netlink handle in it; on error nothing stays open.
func OpenHost(path string) (ns netns.NsHandle, h *netlink.Handle, self bool, err error) {
	if path == "" {
		self = true
		ns, err = netns.GetFromPath("/proc/self/ns/net")
		if err == nil {
			h, err = netlink.NewHandle()
		}
	} else {
		ns, err = inetns.Resolve(forwarder.NetNSRef{Path: path})
		if err == nil {
			h, err = netlink.NewHandleAt(ns)
		}
	}
	if err != nil {
		if ns.IsOpen() {
			_ = ns.Close()
		}
		return netns.None(), nil, false, fmt.Errorf("host namespace %q: %w", path, err)
	}
	return ns, h, self, nil
}

// CheckKernelName checks a KERNEL side before anything is built: the
// namespace resolves, the interface name (the requested one, else the
// default) is valid, and no interface of that name exists there unless it
// is this connection's own (a refresh).
func CheckKernelName(name, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	ns, err := ResolveNetNS(side, m)
	if err != nil {
		return err
	}
	defer ns.Close()
	ifName := m.Param(forwarder.ParamIfName)
	if ifName == "" {
		ifName = DefaultIfName(name, id, side)
	}
	if err := forwarder.ValidateIfName(ifName); err != nil {
		return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: ParamsField(side) + forwarder.ParamIfName, Err: err}
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("check: netlink handle in %s: %w", m.Param(forwarder.ParamNetNSURL), err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("check: link %q: %w", ifName, err)
	}
	if l.Attrs().Alias == LinkAlias(name, id, side) {
		return nil
	}
	return forwarder.Errorf(forwarder.CodeAlreadyExists, ParamsField(side)+forwarder.ParamIfName,
		"interface %q already exists in network namespace %s", ifName, m.Param(forwarder.ParamNetNSURL))
}

// CloseHost closes what OpenHost opened and clears it.
func CloseHost(ns *netns.NsHandle, h **netlink.Handle) error {
	if *h != nil {
		(*h).Close()
		*h = nil
	}
	if ns.IsOpen() {
		err := ns.Close()
		*ns = netns.None()
		return err
	}
	return nil
}
