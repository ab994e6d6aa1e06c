package kernel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/ebpf/xconnect"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/keyed"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// Options configure a Dataplane.
type Options struct {
	// Name is the forwarder's NSM name. It scopes every object the
	// dataplane owns (link aliases, pin directories, host interface names),
	// so several forwarders, or parallel tests, on one host never touch
	// each other's objects. Required; [A-Za-z0-9_.-]{1,64}.
	Name string
	// HostNetNS is the path of the network namespace that holds the
	// host-side veth ends. "" means the process's own namespace.
	HostNetNS string
	// PinDir is the bpffs directory under which connections' BPF objects
	// are pinned, in <PinDir>/<Name>/<connection>. Default
	// /sys/fs/bpf/nsmfwd; bpffs is mounted at /sys/fs/bpf if it is not.
	PinDir string
	// Attach is the attach mode: "auto" (default, currently tc), "tc"
	// (clsact qdisc and a direct-action BPF filter) or "tcx" (pinned tcx
	// links, Linux 6.6+). See xconnect.ModeAuto for why auto is not tcx.
	Attach string
	// TunnelIP is this node's tunnel end for REMOTE mechanisms (VXLAN,
	// and WireGuard when the kernel has it); without it only KERNEL is
	// offered and accepted.
	TunnelIP netip.Addr
	// VXLANPort is the UDP port VXLAN tunnels use at both ends (default
	// 4789).
	VXLANPort uint16
	// VLANDevices maps a connection's "via" label to the host device its
	// VLAN side leaves by (NSM_DEVICE_SELECTOR_FILE); without any, VLAN
	// is not offered.
	VLANDevices map[string]string
	// Logger receives the dataplane's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultPinDir is where BPF objects are pinned unless Options.PinDir says
// otherwise.
const DefaultPinDir = "/sys/fs/bpf/nsmfwd"

const rollbackTimeout = 10 * time.Second

// reconcileWorkers bounds how many connections a restart adopts at once.
const reconcileWorkers = 8

// Dataplane is the kernel (veth + eBPF) dataplane.
type Dataplane struct {
	opts     Options
	log      *slog.Logger
	mode     xconnect.Mode
	hostNS   netns.NsHandle // always open
	hostSelf bool           // hostNS is the process's own namespace
	host     *netlink.Handle
	deleter  *deleter
	locks    keyed.Mutex
	probed   atomic.Bool // the program has loaded once: Ready stops probing
	vxlanMu  sync.Mutex  // VNI allocation and VXLAN device creation
	wg       wgState     // WireGuard: genetlink client, pending offers, ports
}

var _ forwarder.Dataplane = (*Dataplane)(nil)

// New opens the host namespace, makes sure bpffs is mounted and returns a
// Dataplane. It creates no vWire; call Reconcile to adopt existing ones.
func New(ctx context.Context, opts Options) (*Dataplane, error) {
	if !vwire.ValidName.MatchString(opts.Name) {
		return nil, fmt.Errorf("kernel dataplane: name %q must match %s", opts.Name, vwire.ValidName)
	}
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	if opts.VXLANPort == 0 {
		opts.VXLANPort = forwarder.VXLANPort
	}
	opts.TunnelIP = opts.TunnelIP.Unmap()
	mode := xconnect.Mode(opts.Attach)
	switch mode {
	case "":
		mode = xconnect.ModeAuto
	case xconnect.ModeAuto, xconnect.ModeTCX, xconnect.ModeTC:
	default:
		return nil, fmt.Errorf("kernel dataplane: attach mode %q is not auto, tcx or tc", opts.Attach)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dataplane{opts: opts, log: log.With("dataplane", "kernel"), mode: mode}
	var err error
	if d.hostNS, d.host, d.hostSelf, err = vwire.OpenHost(opts.HostNetNS); err != nil {
		return nil, fmt.Errorf("kernel dataplane: %w", err)
	}
	if d.deleter, err = newDeleter(d.host, d.hostNS); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("kernel dataplane: %w", err)
	}
	if err := ensureBPFFS(opts.PinDir); err != nil {
		_ = d.Close()
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(opts.PinDir, opts.Name), 0o700); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("kernel dataplane: pin dir: %w", err)
	}
	return d, nil
}

// ensureBPFFS mounts bpffs at /sys/fs/bpf when dir is meant to be on it and
// it is not mounted, then checks that dir's filesystem is bpffs.
func ensureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if isBPFFS(root) != nil {
		if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("kernel dataplane: mount bpffs at %s: %w", root, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("kernel dataplane: pin dir %s: %w", dir, err)
	}
	return isBPFFS(dir)
}

func isBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not on a bpffs", dir)
	}
	return nil
}

// Name implements forwarder.Dataplane.
func (d *Dataplane) Name() string { return "kernel" }

// Mechanisms implements forwarder.Dataplane: KERNEL on both sides, and
// VXLAN when the dataplane has a tunnel address, WIREGUARD too when the
// kernel has WireGuard.
func (d *Dataplane) Mechanisms(side forwarder.SideKind) []string {
	out := []string{forwarder.MechanismKernel}
	if d.remote() {
		out = append(out, forwarder.MechanismVXLAN)
	}
	if d.wgSupported() {
		out = append(out, forwarder.MechanismWireGuard)
	}
	if side == forwarder.SideEndpoint && len(d.opts.VLANDevices) > 0 {
		out = append(out, forwarder.MechanismVLAN)
	}
	return out
}

// Ready reports whether bpffs is usable and the program loads.
func (d *Dataplane) Ready(context.Context) error {
	if err := isBPFFS(filepath.Join(d.opts.PinDir, d.opts.Name)); err != nil {
		return forwarder.Errorf(forwarder.CodeUnavailable, "", "kernel dataplane: %w", err)
	}
	// Loading the program is probed until it first succeeds, not on every
	// health check: each probe is a BPF program that appears machine-wide
	// for a moment, which operators (and leak checks) counting programs
	// would see.
	if !d.probed.Load() {
		if err := xconnect.Probe(); err != nil {
			return forwarder.Errorf(forwarder.CodeUnavailable, "", "kernel dataplane: %w", err)
		}
		d.probed.Store(true)
	}
	return nil
}

// Close releases the dataplane's handles. vWires stay in place.
func (d *Dataplane) Close() error {
	// The forwarder's own pin directory goes when it holds no connection,
	// so a forwarder that served and closed everything leaves no trace in
	// bpffs. rmdir fails harmlessly while pins remain.
	_ = os.Remove(filepath.Join(d.opts.PinDir, d.opts.Name))
	d.closeWireGuard()
	d.deleter.close()
	d.deleter = nil
	return vwire.CloseHost(&d.hostNS, &d.host)
}

// Check implements forwarder.Dataplane.
func (d *Dataplane) Check(_ context.Context, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	switch m.Type {
	case forwarder.MechanismKernel:
		return vwire.CheckKernelName(d.opts.Name, id, side, m)
	case forwarder.MechanismVXLAN:
		return d.checkVXLAN(side, m)
	case forwarder.MechanismVLAN:
		return d.checkVLAN(side, m)
	case forwarder.MechanismWireGuard:
		return d.checkWireGuard(side, m)
	}
	return forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(side), "parameters.")+"type", "mechanism %q is not one of %v", m.Type, d.Mechanisms(side))
}

// Connect implements forwarder.Dataplane.
func (d *Dataplane) Connect(ctx context.Context, c *Conn) error {
	unlock := d.locks.Lock(c.ID)
	defer unlock()
	_, err := d.connect(ctx, c, false)
	return err
}

// Conn is forwarder.Conn, named here for brevity.
type Conn = forwarder.Conn

// connect creates or refreshes c and reports whether it had to create or
// reinstall anything (false: everything was there and only L3 settings
// were brought in line). adopt (a restart's Reconcile) leaves the L3
// settings of an interface that survived alone: reading them back costs
// namespace-wide dumps per connection, which would keep a forwarder with
// a thousand vWires from serving for seconds; the next refresh re-syncs.
func (d *Dataplane) connect(ctx context.Context, c *Conn, adopt bool) (changed bool, err error) {
	log := d.log.With("conn_id", c.ID)
	sides := []*vwire.End{
		{Kind: forwarder.SideClient, Side: &c.Client, NS: netns.None()},
		{Kind: forwarder.SideEndpoint, Side: &c.Endpoint, NS: netns.None()},
	}
	defer func() {
		for _, s := range sides {
			s.Close()
		}
	}()
	// device[i]: side i's node end is a device rather than a veth (a
	// VXLAN or WireGuard device of its own, or the VLAN trunk that trunked
	// sides share); l3[i]: that device has no link-layer header.
	device, l3 := [2]bool{}, [2]bool{}
	trunked := false // the endpoint side is a VLAN on a trunk
	var dom vlanDomain
	for i, s := range sides {
		s.HostName = vwire.HostIfName(d.opts.Name, c.ID, s.Kind)
		s.Alias = vwire.LinkAlias(d.opts.Name, c.ID, s.Kind)
		switch s.Side.Mechanism.Type {
		case forwarder.MechanismKernel:
		case forwarder.MechanismVXLAN:
			device[i] = true // ensureVXLAN checks its parameters
			continue
		case forwarder.MechanismWireGuard:
			// Checked before anything is built (IP payload only).
			if err := d.checkWireGuardConn(c, s.Kind); err != nil {
				return false, err
			}
			device[i], l3[i] = true, true
			continue
		case forwarder.MechanismVLAN:
			if s.Kind != forwarder.SideEndpoint {
				return false, d.checkVLAN(s.Kind, s.Side.Mechanism)
			}
			if device[0] {
				return false, forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(s.Kind), "parameters.")+"type",
					"a VLAN endpoint side needs a KERNEL client side, not %s", c.Client.Mechanism.Type)
			}
			if dom, err = d.vlanTarget(c); err != nil {
				return false, err
			}
			trunked = true
			continue
		default:
			return false, forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(s.Kind), "parameters.")+"type",
				"mechanism %q is not one of %v", s.Side.Mechanism.Type, d.Mechanisms(s.Kind))
		}
		if s.NS, err = vwire.ResolveNetNS(s.Kind, s.Side.Mechanism); err != nil {
			return false, err
		}
		s.IfName = s.Side.Mechanism.Param(forwarder.ParamIfName)
		if s.IfName == "" {
			s.IfName = vwire.DefaultIfName(d.opts.Name, c.ID, s.Kind)
			if s.Side.Mechanism.Params == nil {
				s.Side.Mechanism.Params = make(map[string]string)
			}
			s.Side.Mechanism.Params[forwarder.ParamIfName] = s.IfName
		}
		if err := forwarder.ValidateIfName(s.IfName); err != nil {
			return false, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(s.Kind) + forwarder.ParamIfName, Err: err}
		}
		if s.SameNS, err = inetns.Same(s.NS, d.hostNS); err != nil {
			return false, err
		}
		if s.NL, err = netlink.NewHandleAt(s.NS); err != nil {
			return false, fmt.Errorf("connect %s: netlink handle: %w", s.Kind, err)
		}
	}

	pinDir := connPinDir(d.opts.PinDir, d.opts.Name, c.ID)
	installed := false
	defer func() {
		if err == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		var errs []error
		for _, s := range sides {
			if s.Created && s.Host != nil {
				if derr := d.host.LinkDel(s.Host); derr != nil && !vwire.IsNotFound(derr) {
					errs = append(errs, derr)
				}
			}
		}
		if installed {
			errs = append(errs, d.removeXConnect(pinDir))
		}
		if rerr := errors.Join(errs...); rerr != nil {
			log.ErrorContext(rctx, "connect rollback incomplete", "error", rerr)
		}
	}()

	ipMode := c.Payload == forwarder.PayloadIP
	reinstall := false
	// Tunnels first: they may lower the MTU the veths get.
	for i, s := range sides {
		if !device[i] {
			continue
		}
		ensure := func() error { return d.ensureVXLAN(c, s) }
		if l3[i] {
			ensure = func() error { return d.ensureWireGuard(ctx, c, s) }
		}
		if err := ensure(); err != nil {
			return changed || s.Created, err
		}
		if s.Created {
			changed = true
			reinstall = true
		}
	}
	var trunk netlink.Link
	if trunked {
		if trunk, err = d.trunk(dom); err != nil {
			return false, err
		}
		if mtu := uint32(trunk.Attrs().MTU); c.MTU == 0 || c.MTU > mtu {
			c.MTU = mtu
		}
	}
	for i, s := range sides {
		if device[i] || (trunked && i == 1) {
			continue
		}
		if err := s.EnsurePair(d.host, c.MTU); err != nil {
			return changed || s.Created, err
		}
		if s.Created {
			changed = true
			reinstall = true
		}
		flip, err := s.ConfigurePeer(c.MTU, ipMode, !adopt || s.Created)
		if err != nil {
			return changed, err
		}
		reinstall = reinstall || flip
		if err := s.ConfigureHost(d.host, c.MTU); err != nil {
			return changed, err
		}
	}

	if trunked {
		// The trunk stands in for the endpoint's node end.
		sides[1].Host = trunk
		device[1] = true
	}
	// Toward a veth whose peer is in another namespace the program enters
	// it directly; toward a device it sends out through it, and the
	// device's own address stands for the far side in IP mode (a device
	// without one, the other side's node end).
	mac := func(i int) net.HardwareAddr {
		if l3[i] {
			return sides[1-i].Host.Attrs().HardwareAddr
		}
		if device[i] {
			return sides[i].Host.Attrs().HardwareAddr
		}
		return sides[i].Peer.Attrs().HardwareAddr
	}
	cfg := xconnect.Config{
		ClientIfindex:   sides[0].Host.Attrs().Index,
		EndpointIfindex: sides[1].Host.Attrs().Index,
		PeerClient:      !device[0] && !sides[0].SameNS,
		PeerEndpoint:    !device[1] && !sides[1].SameNS,
		IPMode:          ipMode,
		ClientMAC:       mac(0),
		EndpointMAC:     mac(1),
		EndpointVLAN:    dom.vid,
		ClientL3:        l3[0],
		EndpointL3:      l3[1],
	}
	xo := d.xopts(pinDir)
	if trunked {
		xo.SharedIfindex = cfg.EndpointIfindex
	}
	if !reinstall {
		x, oerr := xconnect.Open(pinDir)
		if oerr == nil {
			verr := x.Verify(d.xopts(pinDir).HostNS, cfg.ClientIfindex, cfg.EndpointIfindex)
			_ = x.Close()
			if verr != nil {
				log.InfoContext(ctx, "cross-connect incomplete, reinstalling", "reason", verr)
				reinstall = true
			}
		} else {
			reinstall = true
		}
	}
	if reinstall {
		x, err := xconnect.Install(xo, cfg)
		if err != nil {
			return changed, fmt.Errorf("connect: %w", err)
		}
		installed = true
		changed = true
		log.DebugContext(ctx, "cross-connect installed", "mode", x.Mode, "peer_client", cfg.PeerClient, "peer_endpoint", cfg.PeerEndpoint, "ip_mode", cfg.IPMode)
		_ = x.Close()
	}
	return changed, nil
}

// xopts are the xconnect options of a connection; the host namespace is
// passed only when it is not the process's own.
func (d *Dataplane) xopts(pinDir string) xconnect.Options {
	o := xconnect.Options{PinDir: pinDir, Mode: d.mode, HostNS: netns.None()}
	if !d.hostSelf {
		o.HostNS = d.hostNS
	}
	return o
}

// Disconnect implements forwarder.Dataplane.
func (d *Dataplane) Disconnect(ctx context.Context, id string) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	return d.remove(ctx, id)
}

func (d *Dataplane) remove(_ context.Context, id string) error {
	var errs []error
	var links []netlink.Link
	for _, side := range []forwarder.SideKind{forwarder.SideClient, forwarder.SideEndpoint} {
		d.forgetDevice(vwire.HostIfName(d.opts.Name, id, side)) // a WireGuard device's port
		l, err := d.host.LinkByName(vwire.HostIfName(d.opts.Name, id, side))
		if err != nil {
			if !vwire.IsNotFound(err) {
				errs = append(errs, err)
			}
			continue
		}
		if l.Attrs().Alias != vwire.LinkAlias(d.opts.Name, id, side) {
			continue // not ours
		}
		links = append(links, l)
	}
	// The peers go with them, in whatever namespace they are.
	if err := d.deleter.delete(links...); err != nil {
		errs = append(errs, fmt.Errorf("disconnect: %w", err))
	}
	errs = append(errs, d.removeXConnect(connPinDir(d.opts.PinDir, d.opts.Name, id)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disconnect %q: %w", id, err)
	}
	return nil
}

// Stats implements forwarder.Dataplane.
func (d *Dataplane) Stats(_ context.Context, id string) (forwarder.Stats, error) {
	x, err := xconnect.Open(connPinDir(d.opts.PinDir, d.opts.Name, id))
	if errors.Is(err, fs.ErrNotExist) {
		return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "connection %q: no datapath", id)
	}
	if err != nil {
		return forwarder.Stats{}, fmt.Errorf("stats %q: %w", id, err)
	}
	defer x.Close()
	return x.ReadStats()
}

// Reconcile implements forwarder.Dataplane. It needs no in-memory state:
// owned objects are found by link alias and pin directory.
func (d *Dataplane) Reconcile(ctx context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	res := forwarder.ReconcileResult{Failed: map[string]error{}}
	owned := map[string]bool{}
	links, err := vwire.ListLinks(d.host)
	if err != nil {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	for _, l := range links {
		if id, _, ok := vwire.ParseAlias(d.opts.Name, l.Attrs().Alias); ok {
			owned[id] = true
		}
	}
	root := filepath.Join(d.opts.PinDir, d.opts.Name)
	entries, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return res, fmt.Errorf("reconcile: %w", err)
	}
	dirs := map[string]bool{}
	for _, e := range entries {
		if e.IsDir() {
			dirs[e.Name()] = true
		}
	}

	want := map[string]bool{}
	for _, c := range wanted {
		want[c.ID] = true
		delete(dirs, pinDirName(c.ID))
	}
	forwarder.AdoptEach(&res, wanted, reconcileWorkers, func(c *Conn) (bool, error) {
		unlock := d.locks.Lock(c.ID)
		defer unlock()
		changed, err := d.connect(ctx, c, true)
		if err != nil {
			if rerr := d.remove(ctx, c.ID); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return changed, err
	})
	var errs []error
	for id := range owned {
		delete(dirs, pinDirName(id))
		if want[id] {
			continue
		}
		unlock := d.locks.Lock(id)
		if err := d.remove(ctx, id); err != nil {
			errs = append(errs, err)
		} else {
			res.Removed = append(res.Removed, id)
		}
		unlock()
	}
	// Pin directories without links: the id may be unreadable (hashed).
	for dir := range dirs {
		if err := d.removeXConnect(filepath.Join(root, dir)); err != nil {
			errs = append(errs, err)
		} else {
			res.Removed = append(res.Removed, dir)
		}
	}
	if len(res.Failed) == 0 {
		res.Failed = nil
	}
	return res, errors.Join(errs...)
}
