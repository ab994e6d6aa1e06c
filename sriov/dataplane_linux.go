package sriov

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/keyed"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// Mechanism parameters the SR-IOV dataplane reads besides KERNEL's.
const (
	// ParamTokenID is NSM's device token id (common.DeviceTokenIDKey). A
	// value holding a '/' is taken as the pool itself; other values go
	// through Options.TokenResolver.
	ParamTokenID = "tokenID"
	// ParamSRIOVToken names the pool, "<serviceDomain>/<capability>", as
	// NSM's sriovToken label does (the control plane copies the label
	// here; see docs/sriov.md).
	ParamSRIOVToken = "sriovToken"
	// ParamPCIAddress is set on the client's mechanism to the VF given.
	ParamPCIAddress = "pciAddress"
	// ParamVLAN is set on both mechanisms to the VLAN the VFs share.
	ParamVLAN = "vlan"
)

const rollbackTimeout = 10 * time.Second

// Options configure a Dataplane.
type Options struct {
	// Name is the forwarder's NSM name; it scopes the link aliases that
	// mark the VF netdevs the dataplane moved. Required.
	Name string
	// Config lists the PFs and their VF ranges. Required.
	Config *Config
	// StateDir holds one record per allocated VF (its connection and
	// original state), so a restarted forwarder restores or adopts it.
	// Required.
	StateDir string
	// HostNetNS is the path of the namespace the VF netdevs live in when
	// not given to a client (the PF's). "" means the process's own.
	HostNetNS string
	// SysfsRoot is where sysfs is mounted; default /sys. It must show the
	// host namespace's netdevs.
	SysfsRoot string
	// CgroupRoot is the mount point of the cgroup hierarchy that VFIO
	// clients' cgroupDir parameters are relative to; default
	// /sys/fs/cgroup.
	CgroupRoot string
	// PFLink reads and sets VF settings through the PF; default NetlinkPF
	// in the host namespace.
	PFLink PFLink
	// PCIDriver binds VFs to drivers; default the sysfs at SysfsRoot.
	PCIDriver PCIDriver
	// Cgroups gives VFIO devices to client cgroups; default the cgroup
	// v1/v2 implementation at CgroupRoot.
	Cgroups DeviceCgroups
	// WatchInterval is how often Watch checks every connection's sides;
	// default DefaultWatchInterval.
	WatchInterval time.Duration
	// TokenResolver maps a device token id that is not a pool name to a
	// pool (e.g. from the device plugin's allocations); nil refuses them.
	TokenResolver func(tokenID string) (pool string, err error)
	// Logger receives the dataplane's logs; nil discards them.
	Logger *slog.Logger
}

// Dataplane gives VFs to clients: KERNEL (the VF netdev moved into the
// client's namespace) or VFIO (the VF bound to vfio-pci, its group device
// handed over), and a VF of the same PF to the endpoint (KERNEL). The two
// VFs share a per-connection VLAN, so the NIC's embedded switch joins them
// and only them.
type Dataplane struct {
	opts    Options
	log     *slog.Logger
	sys     Sysfs
	pci     PCIDriver
	pf      PFLink
	cg      DeviceCgroups
	hostNS  netns.NsHandle
	host    *netlink.Handle
	pool    *pool
	locks   keyed.Mutex // per connection
	vfLocks keyed.Mutex // per VF PCI address
	stray   []*record   // records of VFs no longer configured
}

var _ forwarder.Dataplane = (*Dataplane)(nil)

// New discovers the configured PFs and VFs, loads the persisted
// allocations and returns the dataplane. It changes nothing on the node;
// call Reconcile to adopt or restore what the records name.
func New(_ context.Context, opts Options) (*Dataplane, error) {
	if !vwire.ValidName.MatchString(opts.Name) {
		return nil, fmt.Errorf("sriov dataplane: name %q must match %s", opts.Name, vwire.ValidName)
	}
	if opts.Config == nil {
		return nil, errors.New("sriov dataplane: no config")
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, forwarder.Errorf(forwarder.CodeInvalidArgument, "", "sriov dataplane: config: %w", err)
	}
	if opts.StateDir == "" {
		return nil, errors.New("sriov dataplane: no state directory")
	}
	if opts.SysfsRoot == "" {
		opts.SysfsRoot = DefaultSysfsRoot
	}
	if opts.CgroupRoot == "" {
		opts.CgroupRoot = DefaultCgroupRoot
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dataplane{opts: opts, log: log.With("dataplane", "sriov"), sys: Sysfs{Root: opts.SysfsRoot}}
	var err error
	if d.hostNS, d.host, _, err = vwire.OpenHost(opts.HostNetNS); err != nil {
		return nil, fmt.Errorf("sriov dataplane: %w", err)
	}
	d.pci, d.pf, d.cg = opts.PCIDriver, opts.PFLink, opts.Cgroups
	if d.pci == nil {
		d.pci = d.sys
	}
	if d.pf == nil {
		d.pf = &NetlinkPF{Handle: d.host}
	}
	if d.cg == nil {
		d.cg = &HostCgroups{Root: opts.CgroupRoot, PinDir: DefaultCgroupPinDir}
	}
	store, err := forwarder.OpenStore(opts.StateDir)
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("sriov dataplane: %w", err)
	}
	d.pool = &pool{store: store, figures: &figures{}, byPCI: map[string]*vfEntry{}, groupDevices: map[int]int{}}
	if err := d.discover(); err != nil {
		_ = d.Close()
		// The node is not as the config says (no such PF, no SR-IOV, VFs
		// not enabled, another driver): the operator's to fix.
		return nil, forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "sriov dataplane: %w", err)
	}
	if d.stray, err = d.pool.load(); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("sriov dataplane: %w", err)
	}
	return d, nil
}

// discover reads every configured PF from sysfs. sriov_numvfs is checked,
// never written: enabling VFs is the operator's job.
func (d *Dataplane) discover() error {
	for _, c := range d.opts.Config.PhysicalFunctions {
		pci := c.PCIAddress
		if pci == "" {
			var err error
			if pci, err = d.sys.PCIOfNetdev(c.Name); err != nil {
				return err
			}
		}
		pf, err := d.sys.ReadPF(pci)
		if err != nil {
			return err
		}
		if pf.Driver != c.PFDriver {
			return fmt.Errorf("pf %s: bound to driver %q, config says %q", pci, pf.Driver, c.PFDriver)
		}
		if pf.Netdev == "" {
			return fmt.Errorf("pf %s: no netdev: its VFs cannot be configured", pci)
		}
		e := &pfEntry{cfg: c, pci: pci, netdev: pf.Netdev}
		if c.VLANs != "" {
			e.vlanFirst, e.vlanLast, _ = parseRange(c.VLANs, 4094)
		}
		byIndex := map[int]VF{}
		for _, vf := range pf.VFs {
			byIndex[vf.Index] = vf
		}
		for _, r := range c.VFs {
			first, last, _ := parseRange(r.Range, 255)
			if last >= pf.NumVFs {
				return fmt.Errorf("pf %s: VF range %s, but sriov_numvfs is %d (of %d): enable the VFs first; the forwarder never changes sriov_numvfs",
					pci, r.Range, pf.NumVFs, pf.TotalVFs)
			}
			for i := first; i <= last; i++ {
				vf, ok := byIndex[i]
				if !ok {
					return fmt.Errorf("pf %s: no virtfn%d link in sysfs", pci, i)
				}
				v := &vfEntry{pf: e, vf: vf, use: r.Use, driver: r.Driver}
				e.vfs = append(e.vfs, v)
				d.pool.byPCI[vf.PCI] = v
				if vf.IOMMUGroup >= 0 {
					if _, seen := d.pool.groupDevices[vf.IOMMUGroup]; !seen {
						devs, err := d.sys.IOMMUGroupDevices(vf.IOMMUGroup)
						if err != nil {
							return err
						}
						d.pool.groupDevices[vf.IOMMUGroup] = len(devs)
					}
				}
			}
		}
		slices.SortFunc(e.vfs, func(a, b *vfEntry) int { return a.vf.Index - b.vf.Index })
		d.pool.pfs = append(d.pool.pfs, e)
		d.log.Info("sriov pf discovered", "pf", pci, "netdev", pf.Netdev, "num_vfs", pf.NumVFs, "managed_vfs", len(e.vfs))
	}
	return nil
}

// Name implements forwarder.Dataplane.
func (d *Dataplane) Name() string { return "sriov" }

// Mechanisms implements forwarder.Dataplane: a client gets a VF as KERNEL
// or VFIO; the endpoint side is a KERNEL VF.
func (d *Dataplane) Mechanisms(side forwarder.SideKind) []string {
	if side == forwarder.SideClient {
		return []string{forwarder.MechanismKernel, MechanismVFIO}
	}
	return []string{forwarder.MechanismKernel}
}

// Ready reports whether every configured PF is still there.
func (d *Dataplane) Ready(context.Context) error {
	for _, pf := range d.pool.pfs {
		if _, err := d.host.LinkByName(pf.netdev); err != nil {
			return forwarder.Errorf(forwarder.CodeUnavailable, "", "sriov dataplane: pf %s netdev %s: %w", pf.pci, pf.netdev, err)
		}
	}
	return nil
}

// Close releases handles; VFs stay with their clients.
func (d *Dataplane) Close() error {
	return vwire.CloseHost(&d.hostNS, &d.host)
}

func typeField(side forwarder.SideKind) string {
	f := vwire.ParamsField(side)
	return f[:len(f)-len("parameters.")] + "type"
}

// token returns the pool a client mechanism asks for.
func (d *Dataplane) token(m forwarder.Mechanism) (string, error) {
	field := vwire.ParamsField(forwarder.SideClient)
	tok := m.Param(ParamSRIOVToken)
	if tok == "" {
		if id := m.Param(ParamTokenID); id != "" {
			if strings.Contains(id, "/") {
				tok = id
			} else if d.opts.TokenResolver != nil {
				var err error
				if tok, err = d.opts.TokenResolver(id); err != nil {
					return "", forwarder.Errorf(forwarder.CodeInvalidArgument, field+ParamTokenID, "token id %q: %w", id, err)
				}
			} else {
				return "", forwarder.Errorf(forwarder.CodeInvalidArgument, field+ParamTokenID, "token id %q names no pool", id)
			}
		}
	}
	if tok == "" {
		tok = d.opts.Config.DefaultToken
	}
	if tok == "" {
		return "", forwarder.Errorf(forwarder.CodeInvalidArgument, field+ParamSRIOVToken, "no SR-IOV pool named and no default pool configured")
	}
	if _, _, err := ParseToken(tok); err != nil {
		return "", &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field + ParamSRIOVToken, Err: err}
	}
	served := false
	for _, pf := range d.pool.pfs {
		served = served || pf.serves(tok)
	}
	if !served {
		return "", forwarder.Errorf(forwarder.CodeNotFound, field+ParamSRIOVToken, "no configured PF serves pool %q", tok)
	}
	return tok, nil
}

func useOf(m forwarder.Mechanism) string {
	if m.Type == MechanismVFIO {
		return UseVFIO
	}
	return UseKernel
}

// Check implements forwarder.Dataplane.
func (d *Dataplane) Check(_ context.Context, id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	if !slices.Contains(d.Mechanisms(side), m.Type) {
		return forwarder.Errorf(forwarder.CodeInvalidArgument, typeField(side), "mechanism %q is not one of %v", m.Type, d.Mechanisms(side))
	}
	if m.Type == MechanismVFIO {
		if err := validateVFIO(m, "connection.mechanism"); err != nil {
			return err
		}
	} else if err := d.checkKernel(id, side, m); err != nil {
		return err
	}
	if side != forwarder.SideClient {
		return nil
	}
	tok, err := d.token(m)
	if err != nil {
		return err
	}
	if d.pool.side(id, side) != nil {
		return nil // a refresh keeps its VF
	}
	if !d.pool.available(tok, useOf(m)) {
		d.pool.figures.allocationFailed(tok)
		return forwarder.Errorf(forwarder.CodeResourceExhausted, vwire.ParamsField(side)+ParamSRIOVToken, "pool %q has no free %s VF", tok, useOf(m))
	}
	return nil
}

func (d *Dataplane) checkKernel(id string, side forwarder.SideKind, m forwarder.Mechanism) error {
	return vwire.CheckKernelName(d.opts.Name, id, side, m)
}

// available reports whether pick would find a VF, without taking it.
func (p *pool) available(token, use string) bool {
	group, err := p.pick(token, use, "", "", "")
	if err != nil {
		return false
	}
	p.release(group...)
	return true
}

// Connect implements forwarder.Dataplane.
func (d *Dataplane) Connect(ctx context.Context, c *forwarder.Conn) error {
	unlock := d.locks.Lock(c.ID)
	defer unlock()
	_, err := d.connect(ctx, c, false)
	return err
}

// connect creates or refreshes c. changed reports whether anything had to
// be created or moved (false: adopted as it was).
func (d *Dataplane) connect(ctx context.Context, c *forwarder.Conn, adopt bool) (changed bool, err error) {
	log := d.log.With("conn_id", c.ID)
	for _, s := range []struct {
		kind forwarder.SideKind
		m    forwarder.Mechanism
	}{{forwarder.SideClient, c.Client.Mechanism}, {forwarder.SideEndpoint, c.Endpoint.Mechanism}} {
		if !slices.Contains(d.Mechanisms(s.kind), s.m.Type) {
			return false, forwarder.Errorf(forwarder.CodeInvalidArgument, typeField(s.kind), "mechanism %q is not one of %v", s.m.Type, d.Mechanisms(s.kind))
		}
	}
	tok, err := d.token(c.Client.Mechanism)
	if err != nil {
		return false, err
	}
	fresh := len(d.pool.owned(c.ID)) == 0
	defer func() {
		if err == nil || !fresh {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if rerr := d.remove(rctx, c.ID); rerr != nil {
			log.ErrorContext(rctx, "connect rollback incomplete", "error", rerr)
		}
	}()

	client, cchanged, err := d.ensureSide(ctx, c, forwarder.SideClient, tok, "", adopt)
	if err != nil {
		return cchanged, err
	}
	_, echanged, err := d.ensureSide(ctx, c, forwarder.SideEndpoint, tok, client.pf.pci, adopt)
	return cchanged || echanged, err
}

// ensureSide allocates (or finds) the side's VF and brings it to the
// wanted state.
func (d *Dataplane) ensureSide(ctx context.Context, c *forwarder.Conn, kind forwarder.SideKind, tok, onPF string, adopt bool) (v *vfEntry, changed bool, err error) {
	side := &c.Client
	if kind == forwarder.SideEndpoint {
		side = &c.Endpoint
	}
	m := &side.Mechanism
	use := useOf(*m)
	if v = d.pool.side(c.ID, kind); v != nil && (v.owner.Use != use || (onPF != "" && v.pf.pci != onPF)) {
		// The mechanism or the client's PF changed: give this VF back.
		if err := d.restoreGroup(ctx, v); err != nil {
			return nil, false, err
		}
		v = nil
	}
	if v == nil {
		if v, err = d.allocate(ctx, c, kind, tok, use, onPF, *m); err != nil {
			return nil, false, err
		}
		changed = true
	}
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	m.Params[ParamVLAN] = fmt.Sprint(v.owner.VLAN)
	switch use {
	case UseVFIO:
		ch, err := d.configureVFIO(ctx, v, *m)
		if err != nil {
			return v, changed, err
		}
		d.setVFIOParams(v, m.Params)
		return v, changed || ch, nil
	default:
		ch, err := d.configureKernel(ctx, c, kind, v, side, adopt && !changed)
		if kind == forwarder.SideClient {
			m.Params[ParamPCIAddress] = v.vf.PCI
		}
		return v, changed || ch, err
	}
}

// connMAC is the locally administered unicast MAC given to a side's VF.
func connMAC(name, id string, side forwarder.SideKind) string {
	sum := sha256.Sum256([]byte(name + "/" + id + "/" + string(side)))
	sum[0] = sum[0]&0xfc | 0x02
	return net.HardwareAddr(sum[:6]).String()
}

// allocate takes a VF (a whole IOMMU group for VFIO), captures the
// original state of each and persists the records before anything is
// changed.
func (d *Dataplane) allocate(ctx context.Context, c *forwarder.Conn, kind forwarder.SideKind, tok, use, onPF string, m forwarder.Mechanism) (*vfEntry, error) {
	group, err := d.pool.pick(tok, use, onPF, c.ID, kind)
	if err != nil {
		d.pool.figures.allocationFailed(tok)
		if onPF != "" {
			return nil, forwarder.Errorf(forwarder.CodeResourceExhausted, "", "pf %s has no free kernel VF for the endpoint side", onPF)
		}
		return nil, forwarder.Errorf(forwarder.CodeResourceExhausted, vwire.ParamsField(kind)+ParamSRIOVToken, "pool %q has no free %s VF", tok, use)
	}
	leader := group[0]
	var vlan int
	d.pool.update(func() { vlan = leader.owner.VLAN })
	var saved []*vfEntry
	for i, v := range group {
		rec := record{
			ConnID: c.ID, Side: kind, Use: use, PF: v.pf.pci, PFNetdev: v.pf.netdev, Index: v.vf.Index, PCI: v.vf.PCI,
			VLAN: vlan, MAC: connMAC(d.opts.Name, c.ID, kind), IOMMUGroup: v.vf.IOMMUGroup,
		}
		if i == 0 {
			for _, o := range group[1:] {
				rec.Group = append(rec.Group, o.vf.PCI)
			}
		} else {
			rec.Leader = leader.vf.PCI
		}
		if use == UseKernel {
			rec.NetNS, rec.IfName = m.Param(forwarder.ParamNetNSURL), d.ifName(c.ID, kind, m)
		} else {
			rec.CgroupDir = m.Param(ParamCgroupDir)
		}
		err := d.capture(ctx, v, &rec)
		if err == nil {
			d.pool.update(func() { *v.owner = rec })
			err = d.pool.save(v)
		}
		if err != nil {
			// Nothing was changed yet: forget the records, free the VFs.
			for _, s := range saved {
				_ = d.pool.forget(s)
			}
			d.pool.release(group...)
			return nil, fmt.Errorf("allocate %s: %w", v.vf.PCI, err)
		}
		saved = append(saved, v)
	}
	d.log.InfoContext(ctx, "vf allocated", "conn_id", c.ID, "side", kind, "vf", leader.vf.PCI, "pf", leader.pf.pci,
		"index", leader.vf.Index, "use", use, "vlan", vlan, "group_size", len(group))
	return leader, nil
}

func (d *Dataplane) ifName(id string, kind forwarder.SideKind, m forwarder.Mechanism) string {
	if n := m.Param(forwarder.ParamIfName); n != "" {
		return n
	}
	return vwire.DefaultIfName(d.opts.Name, id, kind)
}

// capture records everything Close must put back.
func (d *Dataplane) capture(ctx context.Context, v *vfEntry, rec *record) error {
	if s, err := d.pf.VF(ctx, v.pf.netdev, v.vf.Index); err == nil {
		rec.Orig.VF = &s
	} else {
		d.log.WarnContext(ctx, "vf settings not readable; safe defaults will be restored", "vf", v.vf.PCI, "error", err)
	}
	var err error
	if rec.Orig.Driver, err = d.sys.Driver(v.vf.PCI); err != nil {
		return err
	}
	if rec.Orig.DriverOverride, err = d.sys.DriverOverride(v.vf.PCI); err != nil {
		return err
	}
	// Read now, not at discovery: the operator may have renamed it.
	names, err := d.sys.Netdevs(v.vf.PCI)
	if rec.Use != UseKernel {
		// A VFIO VF still bound to its netdev driver loses the netdev to
		// vfio-pci; the driver makes a new one on Close, named as the
		// kernel likes, and that one gets this state back.
		if err == nil && len(names) == 1 {
			if l, err := d.host.LinkByName(names[0]); err == nil {
				rec.Orig.Netdev = netdevState(l)
			}
		}
		return nil
	}
	if err != nil || len(names) != 1 {
		names = v.vf.Netdevs
	}
	if len(names) != 1 {
		return fmt.Errorf("vf %s has netdevs %v, want one", v.vf.PCI, names)
	}
	l, err := d.host.LinkByName(names[0])
	if err != nil {
		return fmt.Errorf("vf %s netdev %s: %w", v.vf.PCI, names[0], err)
	}
	rec.Orig.Netdev = netdevState(l)
	return nil
}

func netdevState(l netlink.Link) *NetdevState {
	a := l.Attrs()
	return &NetdevState{Name: a.Name, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Alias: a.Alias, MAC: a.HardwareAddr.String()}
}

// pfSettings are the settings a connection gives its VF: the original
// ones with the connection's MAC and VLAN.
func pfSettings(rec *record) VFSettings {
	s := SafeVFSettings(rec.MAC)
	if rec.Orig.VF != nil {
		s = *rec.Orig.VF
	}
	s.MAC, s.VLAN, s.QoS = rec.MAC, rec.VLAN, 0
	return s
}

// configureKernel sets MAC and VLAN through the PF and moves the VF
// netdev into the side's namespace under the wanted name, with the
// connection's IP context.
func (d *Dataplane) configureKernel(ctx context.Context, c *forwarder.Conn, kind forwarder.SideKind, v *vfEntry, side *forwarder.Side, adopt bool) (changed bool, err error) {
	unlock := d.vfLocks.Lock(v.vf.PCI)
	defer unlock()
	rec := v.owner
	m := side.Mechanism
	ns, err := vwire.ResolveNetNS(kind, m)
	if err != nil {
		return false, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false, fmt.Errorf("connect %s: netlink handle: %w", kind, err)
	}
	defer h.Close()
	ifName := d.ifName(c.ID, kind, m)
	if err := forwarder.ValidateIfName(ifName); err != nil {
		return false, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: vwire.ParamsField(kind) + forwarder.ParamIfName, Err: err}
	}
	if m.Params != nil && m.Params[forwarder.ParamIfName] == "" {
		m.Params[forwarder.ParamIfName] = ifName
	}
	alias := vwire.LinkAlias(d.opts.Name, c.ID, kind)

	want := pfSettings(rec)
	if cur, err := d.pf.VF(ctx, v.pf.netdev, v.vf.Index); err != nil || cur != want {
		if err := d.pf.SetVF(ctx, v.pf.netdev, v.vf.Index, want); err != nil {
			return false, fmt.Errorf("connect %s: vf %s: %w", kind, v.vf.PCI, err)
		}
		changed = true
	}

	link, err := h.LinkByName(ifName)
	switch {
	case err == nil && link.Attrs().Alias == alias:
		// Already in place.
	case err == nil:
		return changed, forwarder.Errorf(forwarder.CodeAlreadyExists, vwire.ParamsField(kind)+forwarder.ParamIfName,
			"interface %q already exists in network namespace %s", ifName, m.Param(forwarder.ParamNetNSURL))
	case !vwire.IsNotFound(err):
		return changed, fmt.Errorf("connect %s: link %s: %w", kind, ifName, err)
	default:
		if link, err = findByAlias(h, alias); err == nil {
			// In place under another name (the request renamed it).
			if err := h.LinkSetDown(link); err != nil {
				return true, fmt.Errorf("connect %s: link down: %w", kind, err)
			}
			if err := h.LinkSetName(link, ifName); err != nil {
				return true, fmt.Errorf("connect %s: rename to %q: %w", kind, ifName, err)
			}
			link.Attrs().Name, link.Attrs().Flags = ifName, link.Attrs().Flags&^net.FlagUp
		} else {
			// Elsewhere (the request names another namespace): back to
			// the host first.
			if rec.NetNS != "" && rec.NetNS != m.Param(forwarder.ParamNetNSURL) {
				if err := d.pullBack(rec, alias); err != nil {
					return true, err
				}
			}
			if link, err = d.moveIn(ctx, v, ns, h, ifName, alias); err != nil {
				return true, err
			}
		}
		changed = true
		if rec.NetNS != m.Param(forwarder.ParamNetNSURL) || rec.IfName != ifName {
			d.pool.update(func() { rec.NetNS, rec.IfName = m.Param(forwarder.ParamNetNSURL), ifName })
			if err := d.pool.save(v); err != nil {
				return true, err
			}
		}
	}
	a := link.Attrs()
	if c.MTU > 0 && a.MTU != int(c.MTU) {
		if err := h.LinkSetMTU(link, int(c.MTU)); err != nil {
			return changed, fmt.Errorf("connect %s: mtu: %w", kind, err)
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return changed, fmt.Errorf("connect %s: link up: %w", kind, err)
		}
	}
	if adopt && !changed {
		return false, nil
	}
	if err := vwire.SyncAddrs(h, link, side.IP.Addrs, false); err != nil {
		return changed, fmt.Errorf("connect %s: %w", kind, err)
	}
	if err := vwire.SyncRoutes(h, link, side.IP.Routes, false); err != nil {
		return changed, fmt.Errorf("connect %s: %w", kind, err)
	}
	if err := vwire.SyncNeighbors(h, link, side.IP.Neighbors, false); err != nil {
		return changed, fmt.Errorf("connect %s: %w", kind, err)
	}
	return changed, nil
}

// findHostNetdev finds the VF netdev in the host namespace: by our alias
// (a VF that came back from a namespace that died keeps it), else by its
// original name, else by what sysfs lists for the VF.
func (d *Dataplane) findHostNetdev(v *vfEntry) (netlink.Link, error) {
	rec := v.owner
	alias := vwire.LinkAlias(d.opts.Name, rec.ConnID, rec.Side)
	links, err := vwire.ListLinks(d.host)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().Alias == alias {
			return l, nil
		}
	}
	names := v.vf.Netdevs
	if rec.Orig.Netdev != nil {
		names = append([]string{rec.Orig.Netdev.Name}, names...)
	}
	if now, err := d.sys.Netdevs(v.vf.PCI); err == nil {
		names = append(names, now...)
	}
	for _, n := range names {
		l, err := d.host.LinkByName(n)
		if err == nil {
			return l, nil
		}
	}
	return nil, fmt.Errorf("vf %s: netdev %v not found in the host namespace", v.vf.PCI, names)
}

// moveIn moves the VF netdev from the host namespace into ns as ifName.
func (d *Dataplane) moveIn(_ context.Context, v *vfEntry, ns netns.NsHandle, h *netlink.Handle, ifName, alias string) (netlink.Link, error) {
	l, err := d.findHostNetdev(v)
	if err != nil {
		return nil, err
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		if err := d.host.LinkSetDown(l); err != nil {
			return nil, fmt.Errorf("vf %s: link down: %w", v.vf.PCI, err)
		}
	}
	if mac, err := net.ParseMAC(v.owner.MAC); err == nil && l.Attrs().HardwareAddr.String() != v.owner.MAC {
		if l, err = d.setNetdevMAC(l, mac); err != nil {
			return nil, fmt.Errorf("vf %s: netdev mac: %w", v.vf.PCI, err)
		}
	}
	// The alias goes first: it marks the netdev as ours wherever it ends up.
	if err := d.host.LinkSetAlias(l, alias); err != nil {
		return nil, fmt.Errorf("vf %s: alias: %w", v.vf.PCI, err)
	}
	same, err := inetns.Same(ns, d.hostNS)
	if err != nil {
		return nil, err
	}
	if !same {
		if err := d.host.LinkSetNsFd(l, int(ns)); err != nil {
			return nil, fmt.Errorf("vf %s: move netdev %s into the namespace: %w", v.vf.PCI, l.Attrs().Name, err)
		}
	}
	moved, err := h.LinkByIndex(l.Attrs().Index)
	if err != nil || moved.Attrs().Alias != alias {
		if moved, err = findByAlias(h, alias); err != nil {
			return nil, fmt.Errorf("vf %s: netdev after the move: %w", v.vf.PCI, err)
		}
	}
	if moved.Attrs().Name != ifName {
		if err := h.LinkSetName(moved, ifName); err != nil {
			return nil, forwarder.Errorf(forwarder.CodeAlreadyExists, "", "vf %s: rename to %q: %w", v.vf.PCI, ifName, err)
		}
		moved.Attrs().Name = ifName
	}
	return moved, nil
}

// setNetdevMAC sets the MAC of the (down) VF netdev in the host
// namespace. VF drivers ask the PF for it, and some refuse while the PF
// holds an administrative MAC or right after it changed (igbvf: "attempted
// to override administratively set MAC address"); they take the PF's MAC
// when they reset, which they do when the link goes down. So on failure
// the link is brought up and down again and, unless it then has the MAC,
// asked once more.
func (d *Dataplane) setNetdevMAC(l netlink.Link, mac net.HardwareAddr) (netlink.Link, error) {
	err := d.host.LinkSetHardwareAddr(l, mac)
	if err == nil {
		return l, nil
	}
	if uerr := d.host.LinkSetUp(l); uerr != nil {
		return l, errors.Join(err, uerr)
	}
	if derr := d.host.LinkSetDown(l); derr != nil {
		return l, errors.Join(err, derr)
	}
	now, lerr := d.host.LinkByIndex(l.Attrs().Index)
	if lerr != nil {
		return l, errors.Join(err, lerr)
	}
	if now.Attrs().HardwareAddr.String() == mac.String() {
		return now, nil
	}
	if err := d.host.LinkSetHardwareAddr(now, mac); err != nil {
		return now, fmt.Errorf("%w (also after a reset, which left %s)", err, now.Attrs().HardwareAddr)
	}
	now.Attrs().HardwareAddr = mac
	return now, nil
}

func findByAlias(h *netlink.Handle, alias string) (netlink.Link, error) {
	links, err := vwire.ListLinks(h)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().Alias == alias {
			return l, nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}

// Disconnect implements forwarder.Dataplane.
func (d *Dataplane) Disconnect(ctx context.Context, id string) error {
	unlock := d.locks.Lock(id)
	defer unlock()
	return d.remove(ctx, id)
}

// remove restores and frees every VF of connection id. VFs taken back from
// a client whose namespace is gone count as reclaimed.
func (d *Dataplane) remove(ctx context.Context, id string) error {
	if v := d.pool.side(id, forwarder.SideClient); v != nil && v.owner.NetNS != "" && netNSGone(v.owner.NetNS) {
		d.pool.figures.reclaimed.Add(1)
	}
	var errs []error
	for _, v := range d.pool.owned(id) {
		if v.owner == nil || v.owner.Leader != "" {
			continue // members go with their leader
		}
		errs = append(errs, d.restoreGroup(ctx, v))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disconnect %q: %w", id, err)
	}
	return nil
}

// restoreGroup restores a leader VF and the rest of its group, and frees
// them when every field could be put back; otherwise the records stay, the
// VFs stay out of the pool and the next Reconcile tries again.
func (d *Dataplane) restoreGroup(ctx context.Context, leader *vfEntry) error {
	group := []*vfEntry{leader}
	for _, pci := range leader.owner.Group {
		if v := d.pool.byPCI[pci]; v != nil && v.owner != nil {
			group = append(group, v)
		}
	}
	var errs []error
	if leader.owner.Use == UseVFIO {
		errs = append(errs, d.revokeVFIO(ctx, leader))
	}
	for _, v := range group {
		if err := d.restore(ctx, v); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := d.pool.forget(v); err != nil {
			errs = append(errs, err)
			continue
		}
		d.pool.release(v)
	}
	return errors.Join(errs...)
}

// restore puts back every captured field of one VF. A netdev that is gone
// for good (its namespace died and took it) cannot be restored: that is
// counted and logged, and the VF is freed anyway.
func (d *Dataplane) restore(ctx context.Context, v *vfEntry) error {
	unlock := d.vfLocks.Lock(v.vf.PCI)
	defer unlock()
	rec := v.owner
	log := d.log.With("conn_id", rec.ConnID, "vf", v.vf.PCI)
	var errs []error
	// The PF first: a VF whose administrative MAC is still the
	// connection's, with trust off, may refuse its netdev's old MAC.
	want := SafeVFSettings(rec.MAC)
	if rec.Orig.VF != nil {
		want = *rec.Orig.VF
	} else if rec.Orig.Netdev != nil {
		want.MAC = rec.Orig.Netdev.MAC
	}
	err := d.pf.SetVF(ctx, v.pf.netdev, v.vf.Index, want)
	if ue, ok := err.(*UnsupportedError); ok { //nolint:errorlint // only a bare UnsupportedError means "the rest was restored"
		// Everything else is back: report what the driver refuses
		// rather than undo the rest with safe defaults.
		d.pool.figures.restoreFailures.Add(1)
		log.WarnContext(ctx, "vf settings the driver does not support were not restored", "fields", ue.Fields, "error", ue.Err)
		err = nil
	}
	if err != nil {
		// What cannot be put back is at least made safe: a VF leaves
		// with spoof checking on, trust off, no VLAN and no rate limit
		// rather than with the connection's settings.
		if serr := d.pf.SetVF(ctx, v.pf.netdev, v.vf.Index, SafeVFSettings(want.MAC)); serr != nil {
			errs = append(errs, fmt.Errorf("restore vf %s settings: %w", v.vf.PCI, errors.Join(err, serr)))
		} else {
			d.pool.figures.restoreFailures.Add(1)
			log.WarnContext(ctx, "vf settings not restored; safe defaults set instead", "error", err)
		}
	}
	var driverErr error
	if rec.Use == UseVFIO || rec.Orig.Driver == DriverVFIO {
		driverErr = d.restoreDriver(ctx, v)
		errs = append(errs, driverErr)
	}
	// After the driver: a VFIO VF's netdev only exists again now.
	if rec.Orig.Netdev != nil && driverErr == nil {
		if err := d.moveOut(ctx, v); err != nil {
			if errors.Is(err, errNetdevGone) {
				d.pool.figures.restoreFailures.Add(1)
				log.WarnContext(ctx, "vf netdev gone, settings restored without it", "error", err)
			} else {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		d.pool.figures.restoreFailures.Add(1)
		return err
	}
	log.DebugContext(ctx, "vf restored")
	return nil
}

var errNetdevGone = errors.New("vf netdev not found")

// moveOut brings the VF netdev back into the host namespace and restores
// its name, MAC, MTU, alias and state.
func (d *Dataplane) moveOut(_ context.Context, v *vfEntry) error {
	rec := v.owner
	o := rec.Orig.Netdev
	alias := vwire.LinkAlias(d.opts.Name, rec.ConnID, rec.Side)
	if rec.NetNS != "" {
		if err := d.pullBack(rec, alias); err != nil {
			return err
		}
	}
	l, err := d.findHostNetdev(v)
	if err != nil {
		return fmt.Errorf("%w: %w", errNetdevGone, err)
	}
	var errs []error
	if l.Attrs().Flags&net.FlagUp != 0 {
		errs = append(errs, d.host.LinkSetDown(l))
	}
	if l.Attrs().Name != o.Name {
		errs = append(errs, wrap("name", d.host.LinkSetName(l, o.Name)))
	}
	if mac, err := net.ParseMAC(o.MAC); err == nil && l.Attrs().HardwareAddr.String() != o.MAC {
		var merr error
		l, merr = d.setNetdevMAC(l, mac)
		errs = append(errs, wrap("netdev mac", merr))
	}
	if o.MTU > 0 && l.Attrs().MTU != o.MTU {
		errs = append(errs, wrap("mtu", d.host.LinkSetMTU(l, o.MTU)))
	}
	if l.Attrs().Alias != o.Alias {
		// An empty alias clears it.
		errs = append(errs, wrap("alias", d.host.LinkSetAlias(l, o.Alias)))
	}
	if o.Up {
		errs = append(errs, wrap("up", d.host.LinkSetUp(l)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore vf %s netdev: %w", v.vf.PCI, err)
	}
	return nil
}

// pullBack moves the netdev carrying alias from the recorded namespace to
// the host one. A namespace that is gone is not an error: a real VF then
// already came back to the initial namespace by itself.
func (d *Dataplane) pullBack(rec *record, alias string) error {
	ref, err := forwarder.ParseNetNSURL(rec.NetNS)
	if err != nil {
		return nil //nolint:nilerr // a record with an unreadable URL has nothing to pull back
	}
	ns, err := inetns.Resolve(ref)
	if err != nil {
		return nil //nolint:nilerr // the namespace is gone: nothing to pull back from
	}
	defer ns.Close()
	if same, err := inetns.Same(ns, d.hostNS); err != nil || same {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("restore: netlink handle in %s: %w", rec.NetNS, err)
	}
	defer h.Close()
	l, err := findByAlias(h, alias)
	if err != nil {
		return nil //nolint:nilerr // not there: looked for in the host namespace next
	}
	if err := h.LinkSetDown(l); err != nil {
		return fmt.Errorf("restore: link down: %w", err)
	}
	// A name taken in the host namespace would make the move fail: move
	// it under a name of its own first.
	tmp := "nsv" + vwire.ConnHash(d.opts.Name, rec.PCI)[:12]
	if err := h.LinkSetName(l, tmp); err != nil {
		return fmt.Errorf("restore: rename: %w", err)
	}
	if err := h.LinkSetNsFd(l, int(d.hostNS)); err != nil {
		return fmt.Errorf("restore: move %s back: %w", rec.PCI, err)
	}
	return nil
}

// Stats implements forwarder.Dataplane: the client VF netdev's counters
// (its transmit is what the client sent toward the endpoint); for VFIO
// clients, the PF's per-VF counters when it has them, else the endpoint
// netdev's.
func (d *Dataplane) Stats(ctx context.Context, id string) (forwarder.Stats, error) {
	cv, rec, ok := d.pool.sideRecord(id, forwarder.SideClient)
	if !ok {
		return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "connection %q: no VF", id)
	}
	if rec.Use == UseVFIO {
		if ps, ok := d.pf.(PFStats); ok {
			s, err := ps.VFStats(ctx, cv.pf.netdev, cv.vf.Index)
			if err != nil {
				return forwarder.Stats{}, fmt.Errorf("stats %q: %w", id, err)
			}
			return forwarder.Stats{
				ClientToEndpoint: forwarder.Counters{Packets: s.TxPackets, Bytes: s.TxBytes, Drops: s.TxDropped},
				EndpointToClient: forwarder.Counters{Packets: s.RxPackets, Bytes: s.RxBytes, Drops: s.RxDropped},
			}, nil
		}
		_, erec, ok := d.pool.sideRecord(id, forwarder.SideEndpoint)
		if !ok {
			return forwarder.Stats{}, forwarder.Errorf(forwarder.CodeNotFound, "", "connection %q: no endpoint VF", id)
		}
		st, err := d.netdevStats(erec)
		if err != nil {
			return forwarder.Stats{}, fmt.Errorf("stats %q: %w", id, err)
		}
		return forwarder.Stats{ClientToEndpoint: st.EndpointToClient, EndpointToClient: st.ClientToEndpoint}, nil
	}
	st, err := d.netdevStats(rec)
	if err != nil {
		return forwarder.Stats{}, fmt.Errorf("stats %q: %w", id, err)
	}
	return st, nil
}

// netdevStats reads a moved VF netdev's counters: transmit as
// ClientToEndpoint, receive as EndpointToClient.
func (d *Dataplane) netdevStats(rec record) (forwarder.Stats, error) {
	ref, err := forwarder.ParseNetNSURL(rec.NetNS)
	if err != nil {
		return forwarder.Stats{}, err
	}
	ns, err := inetns.Resolve(ref)
	if err != nil {
		return forwarder.Stats{}, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return forwarder.Stats{}, err
	}
	defer h.Close()
	l, err := h.LinkByName(rec.IfName)
	if err != nil {
		return forwarder.Stats{}, err
	}
	s := l.Attrs().Statistics
	if s == nil {
		return forwarder.Stats{}, fmt.Errorf("link %s: no statistics", rec.IfName)
	}
	return forwarder.Stats{
		ClientToEndpoint: forwarder.Counters{Packets: s.TxPackets, Bytes: s.TxBytes, Drops: s.TxDropped},
		EndpointToClient: forwarder.Counters{Packets: s.RxPackets, Bytes: s.RxBytes, Drops: s.RxDropped},
	}, nil
}

// Reconcile implements forwarder.Dataplane from the persisted records: the
// wanted connections' VFs are adopted (or rebuilt), every other recorded
// VF is restored and freed, and a wanted connection whose namespace is gone
// fails and has its VFs reclaimed.
func (d *Dataplane) Reconcile(ctx context.Context, wanted []*forwarder.Conn) (forwarder.ReconcileResult, error) {
	res := forwarder.ReconcileResult{Failed: map[string]error{}}
	var errs []error
	for _, rec := range d.stray {
		errs = append(errs, d.restoreStray(ctx, rec))
	}
	d.stray = nil
	want := map[string]bool{}
	for _, c := range wanted {
		want[c.ID] = true
		unlock := d.locks.Lock(c.ID)
		changed, err := d.connect(ctx, c, true)
		if err != nil {
			if rerr := d.remove(ctx, c.ID); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		unlock()
		switch {
		case err != nil:
			res.Failed[c.ID] = err
		case changed:
			res.Rebuilt = append(res.Rebuilt, c.ID)
		default:
			res.Adopted = append(res.Adopted, c.ID)
		}
	}
	for _, id := range d.pool.ownerIDs() {
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
	if len(res.Failed) == 0 {
		res.Failed = nil
	}
	return res, errors.Join(errs...)
}

// restoreStray restores a recorded VF the config no longer lists.
func (d *Dataplane) restoreStray(ctx context.Context, rec *record) error {
	vf, err := d.sys.ReadVF(rec.PCI)
	if err != nil {
		return fmt.Errorf("restore unconfigured vf %s: %w", rec.PCI, err)
	}
	vf.Index = rec.Index
	v := &vfEntry{pf: &pfEntry{pci: rec.PF, netdev: rec.PFNetdev}, vf: *vf, use: rec.Use, owner: rec}
	if rec.Use == UseVFIO {
		_ = d.revokeVFIO(ctx, v)
	}
	if err := d.restore(ctx, v); err != nil {
		return err
	}
	return d.pool.forget(v)
}

// Reclaim restores and frees the VFs of connections whose client
// namespace (KERNEL) is gone, and returns their ids: what the Watcher's
// hints lead the control plane to do, for callers without one.
func (d *Dataplane) Reclaim(ctx context.Context) ([]string, error) {
	var out []string
	var errs []error
	for _, id := range d.pool.ownerIDs() {
		v := d.pool.side(id, forwarder.SideClient)
		if v == nil || v.owner.Use != UseKernel || v.owner.NetNS == "" || !netNSGone(v.owner.NetNS) {
			continue
		}
		unlock := d.locks.Lock(id)
		if err := d.remove(ctx, id); err != nil {
			errs = append(errs, err)
		} else {
			out = append(out, id)
		}
		unlock()
	}
	return out, errors.Join(errs...)
}

// netNSGone reports whether the namespace a URL names is known to be gone
// (a URL that cannot be read is not "gone": nothing is known).
func netNSGone(raw string) bool {
	ref, err := forwarder.ParseNetNSURL(raw)
	if err != nil {
		return false
	}
	ns, err := inetns.Resolve(ref)
	if err == nil {
		_ = ns.Close()
		return false
	}
	return forwarder.CodeOf(err) == forwarder.CodeNotFound
}
