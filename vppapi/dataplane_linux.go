package vppapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.fd.io/govpp/binapi/memclnt"

	"github.com/nsmfwd/nsmfwd/ebpf/xsk"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/keyed"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// NSM's MEMIF mechanism and its parameter keys (as in
// github.com/networkservicemesh/api's memif package).
const (
	MechanismMemif = "MEMIF"
	// ParamSocketFile is the memif socket's path, set by the forwarder.
	ParamSocketFile = "socketfile"
)

// DefaultMemifDir is where per-connection memif sockets live unless
// Options.MemifDir says otherwise.
const DefaultMemifDir = "/run/nsmfwd/memif"

const rollbackTimeout = 10 * time.Second

// Options configure a Dataplane.
type Options struct {
	// Name is the forwarder's NSM name; it scopes every object the
	// dataplane owns (VPP interface tags, link aliases, memif sockets).
	// Required; [A-Za-z0-9_.-]{1,64}.
	Name string
	// Conn is the connection to VPP. Rebind replaces it after VPP restarts.
	Conn *Conn
	// HostNetNS is the namespace VPP runs in, where host-side veth ends
	// are created. "" means the process's own.
	HostNetNS string
	// KernelMode is how KERNEL sides reach VPP: ModeAFPacket (default),
	// ModeAFXDP or ModeTap.
	KernelMode string
	// MemifDir holds one directory per MEMIF connection with its socket.
	// Default DefaultMemifDir.
	MemifDir string
	// Stats reads interface counters; nil: Stats reports zeros.
	Stats StatsReader
	// TunnelIP is this node's tunnel end for VXLAN (it must be the
	// address of the uplink attached to VPP); without it, or without the
	// vxlan plugin, VXLAN is not offered.
	TunnelIP netip.Addr
	// VXLANPort is the UDP port VPP's VXLAN tunnels listen on (default
	// 4789); the peer's may differ.
	VXLANPort uint16
	// VLANDevices maps a connection's "via" label to the host interface
	// (attached to VPP) its VLAN side leaves by; without any, VLAN is not
	// offered.
	VLANDevices map[string]string
	// Rings size the rings of the interfaces of connections; zero fields
	// take DefaultRings' values.
	Rings Rings
	// RxMode is the rx mode given to the interfaces of connections
	// (RxModeInterrupt or RxModePolling; "" leaves VPP's defaults, under
	// which AF_XDP, tap and a connected memif are polled and af_packet is
	// not). A memif gets it when its peer connects, as VPP only then has
	// its queues.
	RxMode string
	// XDPDir, when set, is where nsmfwd writes its XDP program for the
	// AF_XDP interfaces of connections (a directory VPP can read); VPP
	// unloads it with the interface. Without, VPP's default program is
	// used, which VPP 25.10 leaves loaded after the interface is deleted.
	XDPDir string
	// Buffers is VPP's buffers-per-numa when known (a local VPP), 0
	// otherwise. Every AF_XDP interface keeps its fill queue stocked with
	// VPP buffers, so a KERNEL side in AF_XDP mode is refused with
	// ResourceExhausted when the pool could not feed one more.
	Buffers int
	// Logger receives the dataplane's logs; nil discards them.
	Logger *slog.Logger
}

// StatsReader reads VPP interface counters by sw_if_index.
type StatsReader interface {
	InterfaceCounters(ctx context.Context, idx ...uint32) (map[uint32]forwarder.Counters, map[uint32]forwarder.Counters, error)
}

// Dataplane is the VPP dataplane: each side's interface is attached to VPP
// (veth + af_packet or AF_XDP, tap, or memif) and VPP cross-connects them,
// at L2 for ETHERNET payloads and with l3xc for IP payloads.
type Dataplane struct {
	opts   Options
	log    *slog.Logger
	hostNS netns.NsHandle
	host   *netlink.Handle
	locks  keyed.Mutex

	tunnelMu  sync.Mutex       // VNI choice, VXLAN tunnels, VLAN domains
	pinholeMu sync.Mutex       // the uplink's pinhole ACL
	memifs    memifWatch       // memif peers seen connected, for Alive
	wg        wgKeys           // private keys of pending WireGuard offers
	nsWatch   vwire.NetNSWatch // tap mode: pins and processes of the taps' namespaces

	xskAll string // the object file of the AF_XDP program ("" VPP's)

	mu         sync.RWMutex
	conn       *Conn
	live       map[string]*connState // what this process built, for replay
	xdpPending int                   // AF_XDP interfaces being created
}

// connState is one connection's VPP objects.
type connState struct {
	conn *forwarder.Conn
	ifs  [2]*vppIf  // client, endpoint
	sock [2]*uint32 // memif socket ids
}

var _ forwarder.Dataplane = (*Dataplane)(nil)

// New returns a VPP dataplane over opts.Conn. It creates nothing; call
// Reconcile to adopt what a previous process built.
func New(_ context.Context, opts Options) (*Dataplane, error) {
	if !vwire.ValidName.MatchString(opts.Name) {
		return nil, fmt.Errorf("vpp dataplane: name %q must match %s", opts.Name, vwire.ValidName)
	}
	switch opts.KernelMode {
	case "":
		opts.KernelMode = ModeAFPacket
	case ModeAFPacket, ModeAFXDP, ModeTap:
	default:
		return nil, fmt.Errorf("vpp dataplane: kernel mode %q is not %s, %s or %s", opts.KernelMode, ModeAFPacket, ModeAFXDP, ModeTap)
	}
	if opts.MemifDir == "" {
		opts.MemifDir = DefaultMemifDir
	}
	if err := opts.Rings.Validate(); err != nil {
		return nil, fmt.Errorf("vpp dataplane: %w", err)
	}
	switch opts.RxMode {
	case "", RxModeInterrupt, RxModePolling:
	default:
		return nil, fmt.Errorf("vpp dataplane: rx mode %q is not %s or %s", opts.RxMode, RxModeInterrupt, RxModePolling)
	}
	opts.Rings = opts.Rings.withDefaults()
	if opts.VXLANPort == 0 {
		opts.VXLANPort = forwarder.VXLANPort
	}
	opts.TunnelIP = opts.TunnelIP.Unmap()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dataplane{opts: opts, log: log.With("dataplane", "vpp"), conn: opts.Conn, live: map[string]*connState{}}
	var err error
	if opts.XDPDir != "" {
		if d.xskAll, _, err = xsk.WriteObjects(opts.XDPDir); err != nil {
			return nil, fmt.Errorf("vpp dataplane: %w", err)
		}
	}
	if d.hostNS, d.host, _, err = vwire.OpenHost(opts.HostNetNS); err != nil {
		return nil, fmt.Errorf("vpp dataplane: %w", err)
	}
	return d, nil
}

// Name implements forwarder.Dataplane.
func (d *Dataplane) Name() string { return "vpp" }

// Mechanisms implements forwarder.Dataplane: KERNEL and MEMIF, and VXLAN
// when the dataplane has a tunnel address and VPP the vxlan plugin.
func (d *Dataplane) Mechanisms(side forwarder.SideKind) []string {
	out := []string{forwarder.MechanismKernel, MechanismMemif}
	if d.remote() {
		out = append(out, forwarder.MechanismVXLAN)
	}
	if d.wgReady() {
		out = append(out, forwarder.MechanismWireGuard)
	}
	if side == forwarder.SideEndpoint && len(d.opts.VLANDevices) > 0 {
		out = append(out, forwarder.MechanismVLAN)
	}
	return out
}

// Ready implements forwarder.Dataplane: VPP answers.
func (d *Dataplane) Ready(ctx context.Context) error {
	c := d.current()
	if c == nil {
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "vpp dataplane: not connected to VPP")
	}
	if err := c.Invoke(ctx, &memclnt.ControlPing{}, &memclnt.ControlPingReply{}); err != nil {
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "vpp dataplane: %w", err)
	}
	return nil
}

// Close releases the dataplane's handles; vWires stay in place.
func (d *Dataplane) Close() error {
	return vwire.CloseHost(&d.hostNS, &d.host)
}

// Conn is the current connection to VPP (nil while VPP is being
// restarted).
func (d *Dataplane) Conn() *Conn { return d.current() }

func (d *Dataplane) current() *Conn {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.conn
}

func (d *Dataplane) conns() (*Conn, error) {
	c := d.current()
	if c == nil {
		return nil, forwarder.Errorf(forwarder.CodeUnavailable, "", "vpp dataplane: not connected to VPP")
	}
	return c, nil
}

// Check implements forwarder.Dataplane.
func (d *Dataplane) Check(_ context.Context, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	switch m.Type {
	case forwarder.MechanismKernel:
		return vwire.CheckKernelName(d.opts.Name, id, side, m)
	case MechanismMemif:
		if raw := m.Param(forwarder.ParamNetNSURL); raw != "" { // an abstract socket in that namespace
			if _, err := forwarder.ParseNetNSURL(raw); err != nil {
				return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(side) + forwarder.ParamNetNSURL, Err: err}
			}
		}
		return nil
	case forwarder.MechanismVXLAN:
		_, err := forwarder.ParseVXLAN(side, m, d.opts.TunnelIP, d.opts.VXLANPort, vwire.ParamsField(side))
		return err
	case forwarder.MechanismWireGuard:
		_, _, _, err := d.wgEnds(side, m)
		return err
	case forwarder.MechanismVLAN:
		if side == forwarder.SideEndpoint && len(d.opts.VLANDevices) > 0 {
			if _, err := forwarder.ParseVLANID(m.Param(forwarder.ParamVLANID)); err != nil {
				return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(side) + forwarder.ParamVLANID, Err: err}
			}
			return nil
		}
	}
	f := vwire.ParamsField(side)
	return forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(f, "parameters.")+"type",
		"mechanism %q is not one of %v", m.Type, d.Mechanisms(side))
}

// Connect implements forwarder.Dataplane.
func (d *Dataplane) Connect(ctx context.Context, c *forwarder.Conn) error {
	unlock := d.locks.Lock(c.ID)
	defer unlock()
	vc, err := d.conns()
	if err != nil {
		return err
	}
	_, err = d.connect(ctx, vc, c, nil)
	return err
}

// side is what connect learned or built for one side.
type side struct {
	kind    forwarder.SideKind
	s       *forwarder.Side
	end     *vwire.End // KERNEL by veth
	vif     *vppIf
	vifNew  bool
	sock    *uint32
	sockNew bool
	peerMAC net.HardwareAddr // the MAC VPP sends to on this side (nil: memif IP)
	nbma    bool             // a WireGuard interface: routes need a next hop
	release func()           // gives back a reservation of VPP buffers
}

func sideIndex(k forwarder.SideKind) int {
	if k == forwarder.SideEndpoint {
		return 1
	}
	return 0
}

// connect builds or refreshes c. found, when not nil, holds the tagged
// interfaces a Reconcile dumped. changed reports whether anything had to
// be created.
func (d *Dataplane) connect(ctx context.Context, vc *Conn, c *forwarder.Conn, found map[string]vppIf) (changed bool, err error) {
	log := d.log.With("conn_id", c.ID)
	ipMode := c.Payload == forwarder.PayloadIP
	d.mu.RLock()
	st := d.live[c.ID]
	d.mu.RUnlock()
	if st == nil {
		st = &connState{}
	}
	sides := []*side{{kind: forwarder.SideClient, s: &c.Client}, {kind: forwarder.SideEndpoint, s: &c.Endpoint}}
	defer func() {
		for _, s := range sides {
			if s.end != nil {
				s.end.Close()
			}
			if s.release != nil {
				s.release()
			}
		}
	}()
	defer func() {
		if err == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		var errs []error
		for _, s := range sides {
			if s.vifNew && s.vif != nil {
				errs = append(errs, d.deleteIf(rctx, vc, *s.vif))
			}
			if s.sockNew && s.sock != nil {
				errs = append(errs, delMemifSocket(rctx, vc, *s.sock))
				_ = os.RemoveAll(d.memifDir(c.ID, s.kind))
			}
			if s.end != nil && s.end.Created && s.end.Host != nil {
				if derr := d.host.LinkDel(s.end.Host); derr != nil && !vwire.IsNotFound(derr) {
					errs = append(errs, derr)
				}
			}
		}
		if c.Endpoint.Mechanism.Type == forwarder.MechanismVLAN {
			errs = append(errs, d.pruneVLAN(rctx, vc))
		}
		for _, s := range sides {
			if s.vifNew && isTunnel(s.vif) {
				errs = append(errs, d.syncPinholes(rctx, vc))
				break
			}
		}
		if rerr := errors.Join(errs...); rerr != nil {
			log.ErrorContext(rctx, "connect rollback incomplete", "error", rerr)
		}
	}()

	// A tunnel side first: it lowers the MTU the other side is built with.
	order := sides
	if t := c.Endpoint.Mechanism.Type; t == forwarder.MechanismVXLAN || t == forwarder.MechanismVLAN || t == forwarder.MechanismWireGuard {
		order = []*side{sides[1], sides[0]}
	}
	var bd uint32 // the VLAN side's bridge domain
	for _, s := range order {
		i := sideIndex(s.kind)
		s.vif, s.sock = st.ifs[i], st.sock[i]
		tag := ifTag(d.opts.Name, c.ID, s.kind)
		if s.vif == nil && found != nil {
			if v, ok := found[tag]; ok {
				s.vif = &v
			}
		}
		switch s.s.Mechanism.Type {
		case forwarder.MechanismKernel:
			err = d.kernelSide(ctx, vc, c, s, tag, ipMode)
		case MechanismMemif:
			err = d.memifSide(ctx, vc, c, s, tag, ipMode)
		case forwarder.MechanismVXLAN:
			err = d.vxlanSide(ctx, vc, c, s, tag, ipMode)
		case forwarder.MechanismWireGuard:
			err = d.wireguardSide(ctx, vc, c, s, tag, ipMode)
		case forwarder.MechanismVLAN:
			if s.kind != forwarder.SideEndpoint || c.Client.Mechanism.Type == forwarder.MechanismVXLAN {
				err = forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(s.kind), "parameters.")+"type",
					"VLAN is an endpoint-side mechanism with a local client side")
				break
			}
			err = d.vlanSide(ctx, vc, c, &bd)
		default:
			f := vwire.ParamsField(s.kind)
			err = forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(f, "parameters.")+"type",
				"mechanism %q is not one of %v", s.s.Mechanism.Type, d.Mechanisms(s.kind))
		}
		if err != nil {
			return changed, err
		}
		changed = changed || s.vifNew || (s.end != nil && s.end.Created)
	}
	if bd != 0 {
		// A VLAN: the client joins the VLAN's bridge domain.
		a := sides[0].vif.index
		if err := l3xcOff(ctx, vc, a); err != nil {
			return changed, err
		}
		if err := l2xcOff(ctx, vc, a); err != nil {
			return changed, err
		}
		if err := bridge(ctx, vc, a, bd); err != nil {
			return changed, err
		}
	} else if a, b := sides[0].vif.index, sides[1].vif.index; ipMode {
		if err := l2xcOff(ctx, vc, a); err != nil {
			return changed, err
		}
		if err := l2xcOff(ctx, vc, b); err != nil {
			return changed, err
		}
		if err := l3xcSide(ctx, vc, a, b, sides[1].peerMAC, sides[1].nbma); err != nil {
			return changed, err
		}
		if err := l3xcSide(ctx, vc, b, a, sides[0].peerMAC, sides[0].nbma); err != nil {
			return changed, err
		}
	} else {
		if err := l3xcOff(ctx, vc, a); err != nil {
			return changed, err
		}
		if err := l3xcOff(ctx, vc, b); err != nil {
			return changed, err
		}
		if err := l2xc(ctx, vc, a, b); err != nil {
			return changed, err
		}
	}
	for _, s := range sides {
		if s.vif == nil {
			continue // a VLAN side has no interface of its own
		}
		if c.MTU > 0 && s.end != nil {
			if err := setMTU(ctx, vc, s.vif.index, c.MTU); err != nil {
				return changed, err
			}
		}
		if err := setUp(ctx, vc, s.vif.index); err != nil {
			return changed, err
		}
	}
	for _, s := range sides {
		if s.vifNew && isTunnel(s.vif) {
			// A new tunnel: its far end gets a pinhole in the uplink.
			if err := d.syncPinholes(ctx, vc); err != nil {
				return changed, err
			}
			break
		}
	}
	nst := &connState{conn: c.Clone()}
	for _, s := range sides {
		nst.ifs[sideIndex(s.kind)] = s.vif
		nst.sock[sideIndex(s.kind)] = s.sock
	}
	d.mu.Lock()
	d.live[c.ID] = nst
	d.mu.Unlock()
	return changed, nil
}

// kernelSide builds a KERNEL side: a veth pair whose host end VPP attaches
// (af_packet, AF_XDP), or a tap VPP creates in the namespace.
func (d *Dataplane) kernelSide(ctx context.Context, vc *Conn, c *forwarder.Conn, s *side, tag string, ipMode bool) error {
	m := &s.s.Mechanism
	ns, err := vwire.ResolveNetNS(s.kind, *m)
	if err != nil {
		return err
	}
	e := &vwire.End{Kind: s.kind, Side: s.s, NS: ns}
	s.end = e
	e.IfName = m.Param(forwarder.ParamIfName)
	if e.IfName == "" {
		e.IfName = vwire.DefaultIfName(d.opts.Name, c.ID, s.kind)
		if m.Params == nil {
			m.Params = map[string]string{}
		}
		m.Params[forwarder.ParamIfName] = e.IfName
	}
	if err := forwarder.ValidateIfName(e.IfName); err != nil {
		return &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(s.kind) + forwarder.ParamIfName, Err: err}
	}
	e.HostName = vwire.HostIfName(d.opts.Name, c.ID, s.kind)
	e.Alias = vwire.LinkAlias(d.opts.Name, c.ID, s.kind)
	if e.NL, err = netlink.NewHandleAt(ns); err != nil {
		return fmt.Errorf("connect %s: netlink handle: %w", s.kind, err)
	}
	if d.opts.KernelMode == ModeTap {
		return d.tapSide(ctx, vc, c, s, tag, ipMode)
	}
	if err := e.EnsurePair(d.host, c.MTU); err != nil {
		return err
	}
	if e.Created && s.vif != nil {
		// A new pair: whatever VPP held for the old host end is stale.
		if err := d.deleteIf(ctx, vc, *s.vif); err != nil {
			return err
		}
		s.vif = nil
	}
	if _, err := e.ConfigurePeer(c.MTU, ipMode, true); err != nil {
		return err
	}
	geom := d.opts.Rings.afPacket(c.MTU)
	if d.opts.KernelMode == ModeAFXDP || !geom.gso() {
		// AF_XDP hands VPP raw frames, checksums left for offload
		// included, and has no virtio-net header to say so; af_packet
		// rings smaller than a GSO frame would truncate one. Either way
		// the workload computes its checksums itself, which also turns
		// TSO off, so its frames never exceed the MTU.
		if err := vwire.DisableTxChecksum(e.NS, e.IfName); err != nil {
			return fmt.Errorf("connect %s: %w", s.kind, err)
		}
	}
	if err := e.ConfigureHost(d.host, c.MTU); err != nil {
		return err
	}
	s.peerMAC = e.Peer.Attrs().HardwareAddr
	// In IP mode the namespace end does not ARP: the kernel addresses
	// every frame to the interface's own MAC, so VPP's interface takes
	// that MAC to accept them.
	var hw net.HardwareAddr
	if ipMode {
		hw = s.peerMAC
	}
	if s.vif == nil {
		var v vppIf
		if d.opts.KernelMode == ModeAFXDP {
			if s.release, err = d.reserveXDP(); err != nil {
				return err
			}
			v, err = createAFXDP(ctx, vc, e.HostName, "xdp-"+e.HostName, hw, d.opts.Rings.AFXDPQueue, d.xskAll)
			if e.Host != nil {
				v.hostIndex = e.Host.Attrs().Index
			}
		} else {
			v, err = createAFPacket(ctx, vc, e.HostName, hw, geom)
		}
		if err != nil {
			return err
		}
		s.vif, s.vifNew = &v, true
		if err := setTag(ctx, vc, v.index, tag); err != nil {
			return err
		}
		// af_packet starts in interrupt mode, AF_XDP polled.
		if m := d.opts.RxMode; m == RxModePolling || (m == RxModeInterrupt && d.opts.KernelMode == ModeAFXDP) {
			if err := setRxMode(ctx, vc, v.index, m); err != nil {
				return err
			}
		}
	} else if ipMode {
		if err := setMAC(ctx, vc, s.vif.index, hw); err != nil {
			return err
		}
	}
	return nil
}

// deleteIf deletes a VPP interface. VPP 25.10 unloads an AF_XDP
// interface's XDP program only if it can still query the host interface by
// its ifindex: when the host end is gone with its namespace (a client that
// died), VPP would keep the program loaded for ever. So a placeholder veth
// takes the gone interface's ifindex for the time of the delete.
func (d *Dataplane) deleteIf(ctx context.Context, vc *Conn, v vppIf) error {
	if v.kind() != "af_xdp" || v.hostIndex <= 0 {
		return deleteIf(ctx, vc, v)
	}
	if _, err := d.host.LinkByIndex(v.hostIndex); err == nil || !vwire.IsNotFound(err) {
		return deleteIf(ctx, vc, v)
	}
	ph := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("nsmfwdx%d", v.hostIndex), Index: v.hostIndex},
		PeerName:  fmt.Sprintf("nsmfwdy%d", v.hostIndex),
	}
	if err := d.host.LinkAdd(ph); err != nil {
		d.log.WarnContext(ctx, "no placeholder for a gone AF_XDP host interface: VPP keeps its XDP program", "ifindex", v.hostIndex, "error", err)
		return deleteIf(ctx, vc, v)
	}
	defer func() {
		if err := d.host.LinkDel(ph); err != nil && !vwire.IsNotFound(err) {
			d.log.ErrorContext(ctx, "placeholder veth left", "name", ph.Name, "error", err)
		}
	}()
	return deleteIf(ctx, vc, v)
}

// bufferReserve is what VPP's buffer pool keeps besides AF_XDP fill
// queues: af_packet and memif rx, frames in flight, the uplink.
const bufferReserve = 4096

// reserveXDP reserves VPP buffers for one more AF_XDP interface: its fill
// queue (one buffer per slot) and what its rx and tx hold in flight. With
// the pool exhausted VPP would create the interface and silently drop what
// it receives; refusing is the clear outcome.
func (d *Dataplane) reserveXDP() (func(), error) {
	if d.opts.Buffers == 0 {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.xdpPending
	for _, st := range d.live {
		for _, v := range st.ifs {
			if v != nil && v.kind() == "af_xdp" {
				n++
			}
		}
	}
	per := d.opts.Rings.AFXDPQueue + 128
	if limit := (d.opts.Buffers - bufferReserve) / per; n+1 > limit {
		return nil, forwarder.Errorf(forwarder.CodeResourceExhausted, "",
			"VPP's buffer pool (%d buffers) feeds %d AF_XDP interfaces of queue %d and has %d: raise NSM_VPP_BUFFERS (about %d per connection) or use af_packet",
			d.opts.Buffers, limit, d.opts.Rings.AFXDPQueue, n, 2*per)
	}
	d.xdpPending++
	return func() {
		d.mu.Lock()
		d.xdpPending--
		d.mu.Unlock()
	}, nil
}

// tapSide builds a KERNEL side as a tap v2 interface that VPP creates
// directly in the side's namespace.
func (d *Dataplane) tapSide(ctx context.Context, vc *Conn, c *forwarder.Conn, s *side, tag string, ipMode bool) error {
	e := s.end
	d.nsWatch.Track(s.s.Mechanism.Param(forwarder.ParamNetNSURL))
	if s.vif == nil {
		l, err := e.NL.LinkByName(e.IfName)
		if err == nil {
			if l.Attrs().Alias != e.Alias {
				return forwarder.Errorf(forwarder.CodeAlreadyExists, vwire.ParamsField(s.kind)+forwarder.ParamIfName,
					"interface %q already exists in network namespace %s", e.IfName, s.s.Mechanism.Param(forwarder.ParamNetNSURL))
			}
			_ = e.NL.LinkDel(l)
		}
		// VPP opens the namespace by path; it runs as another process, so
		// the path names this process's descriptor of it.
		nsPath := fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(e.NS))
		v, err := createTap(ctx, vc, nsPath, e.IfName, tag, c.MTU, nil, d.opts.Rings.TapRing)
		if err != nil {
			return err
		}
		s.vif, s.vifNew = &v, true
		if d.opts.RxMode != "" {
			if err := setRxMode(ctx, vc, v.index, d.opts.RxMode); err != nil {
				return err
			}
		}
		e.Created = true
	}
	var err error
	if e.Peer, err = e.NL.LinkByName(e.IfName); err != nil {
		return fmt.Errorf("connect %s: tap %s: %w", s.kind, e.IfName, err)
	}
	if _, err := e.ConfigurePeer(c.MTU, ipMode, true); err != nil {
		return err
	}
	s.peerMAC = e.Peer.Attrs().HardwareAddr
	if ipMode {
		if err := setMAC(ctx, vc, s.vif.index, s.peerMAC); err != nil {
			return err
		}
	}
	e.Created = false // the tap is VPP's: deleting the VPP interface removes it
	return nil
}

// memifDir is the per-connection directory of one side's memif socket.
func (d *Dataplane) memifDir(id string, k forwarder.SideKind) string {
	return filepath.Join(d.opts.MemifDir, d.opts.Name, vwire.ConnHash(d.opts.Name, id)[:16]+"-"+string(k)[:1])
}

// memifAbstract is the abstract socket name of one side's memif, in the
// side's namespace: scoped by the forwarder name, then by the connection.
func (d *Dataplane) memifAbstract(id string, k forwarder.SideKind) string {
	return d.memifAbstractPrefix() + vwire.ConnHash(d.opts.Name, id)[:16] + "-" + string(k)[:1]
}

func (d *Dataplane) memifAbstractPrefix() string {
	return "nsmfwd-" + vwire.ConnHash(d.opts.Name, "")[:8] + "-"
}

// abstractName is the abstract socket name of a VPP memif socket filename
// ("abstract:NAME,netns_name=..."), or "".
func abstractName(filename string) string {
	rest, ok := strings.CutPrefix(filename, "abstract:")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, ",")
	return name
}

// memifSide builds a MEMIF side with VPP as the master. As NSM has it, a
// mechanism that names the workload's namespace (inodeURL) gets an
// abstract socket in that namespace, announced by name in socketfile: the
// workload needs no shared file. Without, the socket is a file in a
// per-connection directory, its path announced in socketfile.
func (d *Dataplane) memifSide(ctx context.Context, vc *Conn, c *forwarder.Conn, s *side, tag string, ipMode bool) error {
	m := &s.s.Mechanism
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	abstract := m.Param(forwarder.ParamNetNSURL) != ""
	dir := d.memifDir(c.ID, s.kind)
	path := filepath.Join(dir, "memif.sock")
	if abstract {
		m.Params[ParamSocketFile] = d.memifAbstract(c.ID, s.kind)
	} else {
		m.Params[ParamSocketFile] = path
	}
	if !ipMode {
		s.peerMAC = nil
	}
	if s.vif != nil {
		return nil
	}
	filename := path
	if abstract {
		// VPP opens the namespace by path when it creates the memif; it
		// runs as another process, so the path names this process's
		// descriptor of it.
		ns, err := vwire.ResolveNetNS(s.kind, *m)
		if err != nil {
			return err
		}
		defer ns.Close()
		filename = fmt.Sprintf("abstract:%s,netns_name=/proc/%d/fd/%d", d.memifAbstract(c.ID, s.kind), os.Getpid(), int(ns))
		return d.memifCreate(ctx, vc, s, tag, ipMode, filename, "")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("memif dir: %w", err)
	}
	return d.memifCreate(ctx, vc, s, tag, ipMode, filename, dir)
}

// memifCreate adds the memif socket filename and a master memif on it;
// dir, when not empty, is removed if the socket cannot be added.
func (d *Dataplane) memifCreate(ctx context.Context, vc *Conn, s *side, tag string, ipMode bool, filename, dir string) error {
	id, err := addMemifSocket(ctx, vc, filename)
	if err != nil {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		return err
	}
	s.sock, s.sockNew = &id, true
	v, err := createMemif(ctx, vc, id, ipMode, nil, d.opts.Rings)
	if err != nil {
		return err
	}
	s.vif, s.vifNew = &v, true
	return setTag(ctx, vc, v.index, tag)
}

// Disconnect implements forwarder.Dataplane.
func (d *Dataplane) Disconnect(ctx context.Context, id string) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	vc, err := d.conns()
	if err != nil {
		return err
	}
	return d.remove(ctx, vc, id, nil)
}

// remove deletes every object of id: its VPP interfaces (from memory, or
// from found, or a dump), memif sockets and directories, and veth pairs.
func (d *Dataplane) remove(ctx context.Context, vc *Conn, id string, found map[string]vppIf) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	d.mu.Lock()
	st := d.live[id]
	delete(d.live, id)
	d.mu.Unlock()
	reconciling := found != nil
	if found == nil && st == nil {
		var err error
		if found, err = dumpTagged(ctx, vc, tagPrefix(d.opts.Name)); err != nil {
			return fmt.Errorf("disconnect %q: %w", id, err)
		}
	}
	var errs []error
	tunnel := false
	for _, k := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
		i := sideIndex(k)
		var v *vppIf
		if st != nil {
			v = st.ifs[i]
		} else if f, ok := found[ifTag(d.opts.Name, id, k)]; ok {
			v = &f
		}
		if v != nil {
			errs = append(errs, d.deleteIf(ctx, vc, *v))
			tunnel = tunnel || isTunnel(v)
		}
		if st != nil && st.sock[i] != nil {
			errs = append(errs, delMemifSocket(ctx, vc, *st.sock[i]))
		}
		dir := d.memifDir(id, k)
		if _, err := os.Stat(dir); err == nil {
			if st == nil || st.sock[i] == nil {
				errs = append(errs, d.delMemifSocketByPath(ctx, vc, filepath.Join(dir, "memif.sock")))
			}
			errs = append(errs, os.RemoveAll(dir))
		}
		if st == nil {
			errs = append(errs, d.delMemifSocketByPath(ctx, vc, d.memifAbstract(id, k)))
		}
		l, err := d.host.LinkByName(vwire.HostIfName(d.opts.Name, id, k))
		if err == nil && l.Attrs().Alias == vwire.LinkAlias(d.opts.Name, id, k) {
			if err := d.host.LinkDel(l); err != nil && !vwire.IsNotFound(err) {
				errs = append(errs, err)
			}
		}
	}
	errs = append(errs, d.pruneVLAN(ctx, vc))
	if tunnel && !reconciling {
		// (A Reconcile, which passes found, syncs once at its end.)
		errs = append(errs, d.syncPinholes(ctx, vc))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disconnect %q: %w", id, err)
	}
	return nil
}
