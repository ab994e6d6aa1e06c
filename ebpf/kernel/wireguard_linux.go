package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
	"github.com/nsmfwd/nsmfwd/internal/wgnl"
)

// A WIREGUARD side is a kernel WireGuard device of the connection's own in
// the node namespace, named and aliased like a veth end, with the far
// forwarder as its one peer carrying everything (0.0.0.0/0, ::/0). It has
// no link-layer header: the cross-connect program adds an Ethernet header
// to what it receives, and bpf_redirect drops the header of what is sent
// to it. IP payload only.
//
// The key exchange is the VPP dataplane's, so either may be at either end:
// the forwarder that sends the Request offers src_ip, src_port and the
// public key of a fresh key pair whose private half waits for the answer
// (wgOfferTTL); the serving forwarder builds its device with a key pair of
// its own and answers dst_ip, dst_port, dst_public_key and the MTU. Both
// peers keep alive every wgKeepalive seconds, so either end starts the
// handshake. Unlike VPP, whose tunnels share one port, each kernel device
// has a UDP socket of its own: a node's devices listen on WireGuardPort
// and up, and the port is in the offer or the answer.

// WireGuardPort is the first port of the node's WireGuard devices: NSM's
// default port, the one every tunnel of the VPP dataplane uses.
const WireGuardPort = 51820

const (
	// wgOfferTTL bounds how long an offer's private key and port wait for
	// the next hop's answer (as in the VPP dataplane).
	wgOfferTTL = 2 * time.Minute
	// wgKeepalive is every peer's persistent keepalive, in seconds (as in
	// the VPP dataplane).
	wgKeepalive = 10
	// wgForeignTTL is how long a port found taken by a socket that is not
	// one of our devices is passed over.
	wgForeignTTL = 10 * time.Minute
	// wgBindAttempts bounds the ports tried when the chosen one is taken.
	wgBindAttempts = 8
)

// wgState is the dataplane's WireGuard state: the genetlink client, probed
// once, the pending offers and the ports believed taken.
type wgState struct {
	mu     sync.Mutex
	client *wgnl.Client // nil until the kernel answered
	none   error        // the kernel has no WireGuard (final)
	offers map[wgnl.Key]wgOffer
	// ports are the listen ports believed taken: by one of our devices
	// (dev set, no expiry), an offer, or a socket found in the way.
	ports map[uint16]wgPort
}

type wgOffer struct {
	priv    wgnl.Key
	port    uint16
	expires time.Time
}

type wgPort struct {
	dev     string
	expires time.Time // zero for a device
}

// wireGuard returns the genetlink client of the node namespace. Whether
// the kernel has WireGuard is asked once, at first use: opening the client
// resolves the generic netlink family, which loads the module if the
// kernel can. Only "no" is remembered as final.
func (d *Dataplane) wireGuard() (*wgnl.Client, error) {
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	if d.wg.client != nil || d.wg.none != nil {
		return d.wg.client, d.wg.none
	}
	c, err := wgnl.Open(d.hostNS)
	if errors.Is(err, wgnl.ErrNotSupported) {
		d.wg.none = err
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	d.wg.client = c
	return c, nil
}

// wgSupported reports whether WIREGUARD is built: a tunnel address and a
// kernel with WireGuard.
func (d *Dataplane) wgSupported() bool {
	if !d.remote() {
		return false
	}
	_, err := d.wireGuard()
	return err == nil
}

func (d *Dataplane) closeWireGuard() {
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	d.wg.client.Close()
	d.wg.client = nil
}

// errNoWireGuard declines WIREGUARD on a node whose kernel has none.
func errNoWireGuard(side forwarder.SideKind, cause error) error {
	return forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(vwire.ParamsField(side), "parameters.")+"type",
		"%w: the kernel dataplane does not build %s tunnels on this node; use VXLAN, or the VPP dataplane for WireGuard", cause, forwarder.MechanismWireGuard)
}

// expireLocked forgets the offers and port marks whose time is up.
func (w *wgState) expireLocked(now time.Time) {
	for k, o := range w.offers {
		if now.After(o.expires) {
			delete(w.offers, k)
		}
	}
	for p, x := range w.ports {
		if !x.expires.IsZero() && now.After(x.expires) {
			delete(w.ports, p)
		}
	}
}

// allocLocked takes the first port from WireGuardPort up that is not
// believed taken.
func (w *wgState) allocLocked(mark wgPort) (uint16, error) {
	if w.ports == nil {
		w.ports = map[uint16]wgPort{}
	}
	for p := WireGuardPort; p <= 0xffff; p++ {
		if _, taken := w.ports[uint16(p)]; !taken {
			w.ports[uint16(p)] = mark
			return uint16(p), nil
		}
	}
	return 0, forwarder.Errorf(forwarder.CodeResourceExhausted, "", "no free WireGuard port from %d up", WireGuardPort)
}

// markLocked records that port is taken.
func (w *wgState) markLocked(port uint16, mark wgPort) {
	if w.ports == nil {
		w.ports = map[uint16]wgPort{}
	}
	if port != 0 {
		w.ports[port] = mark
	}
}

// forgetDevice releases the port of device dev, which is being deleted.
func (d *Dataplane) forgetDevice(dev string) {
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	for p, x := range d.wg.ports {
		if x.dev == dev {
			delete(d.wg.ports, p)
		}
	}
}

// offerWireGuard offers WireGuard for IP payloads: our tunnel end, a port
// and the public half of a fresh key pair, whose private half and port wait
// for the answer.
func (d *Dataplane) offerWireGuard(payload forwarder.Payload) (map[string]string, bool) {
	if payload != forwarder.PayloadIP || !d.wgSupported() {
		return nil, false
	}
	priv, err := wgnl.GenerateKey()
	if err != nil {
		d.log.Warn("no WireGuard offer", "error", err)
		return nil, false
	}
	pub := priv.PublicKey()
	now := time.Now()
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	d.wg.expireLocked(now)
	port, err := d.wg.allocLocked(wgPort{expires: now.Add(wgOfferTTL)})
	if err != nil {
		d.log.Warn("no WireGuard offer", "error", err)
		return nil, false
	}
	if d.wg.offers == nil {
		d.wg.offers = map[wgnl.Key]wgOffer{}
	}
	d.wg.offers[pub] = wgOffer{priv: priv, port: port, expires: now.Add(wgOfferTTL)}
	return map[string]string{
		forwarder.ParamSrcIP:        d.opts.TunnelIP.String(),
		forwarder.ParamSrcPort:      strconv.Itoa(int(port)),
		forwarder.ParamSrcPublicKey: pub.String(),
	}, true
}

// offer returns the private key and port of our pending offer of public
// key pub.
func (d *Dataplane) offer(side forwarder.SideKind, pub wgnl.Key) (wgOffer, error) {
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	o, ok := d.wg.offers[pub]
	if !ok || time.Now().After(o.expires) {
		return o, forwarder.Errorf(forwarder.CodeFailedPrecondition, vwire.ParamsField(side)+forwarder.ParamSrcPublicKey,
			"no private key for WireGuard offer %q (expired, or offered before a restart): request again", pub)
	}
	return o, nil
}

// forgetOffer drops the offer of public key pub, now that a device has its
// key.
func (d *Dataplane) forgetOffer(pub wgnl.Key) {
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	delete(d.wg.offers, pub)
}

// wgTunnel is one forwarder's view of a WIREGUARD side.
type wgTunnel struct {
	remote    netip.AddrPort
	remoteKey wgnl.Key
	// localKey is our public key as the mechanism has it: on the endpoint
	// side the one we offered (src_public_key), on the client side the one
	// we answered (dst_public_key, zero before the first answer).
	localKey wgnl.Key
}

// wireGuardTunnel reads a WIREGUARD side. On the client side we serve the
// Request (we are dst_*, the peer src_*); on the endpoint side we sent it
// (we are src_*, the peer dst_*). A missing remote port is NSM's default.
func (d *Dataplane) wireGuardTunnel(side forwarder.SideKind, m forwarder.Mechanism) (wgTunnel, error) {
	var t wgTunnel
	field := vwire.ParamsField(side)
	if !d.remote() {
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, strings.TrimSuffix(field, "parameters.")+"type",
			"mechanism %s needs a tunnel address and the forwarder has none (NSM_TUNNEL_IP)", m.Type)
	}
	localIP, remoteIP, remotePort, localKey, remoteKey := forwarder.ParamDstIP, forwarder.ParamSrcIP, forwarder.ParamSrcPort, forwarder.ParamDstPublicKey, forwarder.ParamSrcPublicKey
	if side == forwarder.SideEndpoint {
		localIP, remoteIP, remotePort, localKey, remoteKey = forwarder.ParamSrcIP, forwarder.ParamDstIP, forwarder.ParamDstPort, forwarder.ParamSrcPublicKey, forwarder.ParamDstPublicKey
	}
	ip, err := netip.ParseAddr(m.Param(remoteIP))
	if err != nil {
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteIP, "missing or invalid remote tunnel address %q", m.Param(remoteIP))
	}
	if ip = ip.Unmap(); ip.Is4() != d.opts.TunnelIP.Is4() {
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteIP, "remote tunnel address %s and ours (%s) are of different families", ip, d.opts.TunnelIP)
	}
	if v := m.Param(localIP); v != "" {
		if a, perr := netip.ParseAddr(v); perr != nil || a.Unmap() != d.opts.TunnelIP {
			return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+localIP, "%q is not this forwarder's tunnel address %s", v, d.opts.TunnelIP)
		}
	}
	port := uint16(WireGuardPort)
	if v := m.Param(remotePort); v != "" {
		if port, err = forwarder.ParsePort(v); err != nil {
			return t, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field + remotePort, Err: err}
		}
	}
	t.remote = netip.AddrPortFrom(ip, port)
	if t.remoteKey, err = wgnl.ParseKey(m.Param(remoteKey)); err != nil {
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteKey, "missing or invalid WireGuard public key %q", m.Param(remoteKey))
	}
	if v := m.Param(localKey); v != "" || side == forwarder.SideEndpoint {
		if t.localKey, err = wgnl.ParseKey(v); err != nil {
			return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+localKey, "missing or invalid WireGuard public key %q", v)
		}
	}
	if t.localKey == t.remoteKey {
		return t, forwarder.Errorf(forwarder.CodeInvalidArgument, field+remoteKey, "the peer's WireGuard public key is ours")
	}
	return t, nil
}

// checkWireGuard validates a WIREGUARD side without touching the node.
func (d *Dataplane) checkWireGuard(side forwarder.SideKind, m forwarder.Mechanism) error {
	if d.remote() {
		if _, err := d.wireGuard(); err != nil {
			if errors.Is(err, wgnl.ErrNotSupported) {
				return errNoWireGuard(side, err)
			}
			return fmt.Errorf("check %s: %w", side, err)
		}
	}
	_, err := d.wireGuardTunnel(side, m)
	return err
}

// checkWireGuardConn is checkWireGuard plus what needs the connection: the
// payload.
func (d *Dataplane) checkWireGuardConn(c *Conn, side forwarder.SideKind) error {
	if c.Payload != forwarder.PayloadIP {
		return forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.payload", "WireGuard carries IP payload, not %s", c.Payload)
	}
	s := &c.Client
	if side == forwarder.SideEndpoint {
		s = &c.Endpoint
	}
	return d.checkWireGuard(side, s.Mechanism)
}

// peerConfig is the one peer of a device of tunnel t.
func (t wgTunnel) peerConfig() wgnl.PeerConfig {
	keepalive := uint16(wgKeepalive)
	return wgnl.PeerConfig{
		PublicKey:                   t.remoteKey,
		Endpoint:                    t.remote,
		PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs:           true,
		AllowedIPs:                  []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
	}
}

// peerInLine reports whether dev has exactly t's peer. The peer's port is
// not compared: WireGuard follows a peer that sends from another one
// (roaming), and a refresh must not undo that.
func (t wgTunnel) peerInLine(dev *wgnl.Device) bool {
	if len(dev.Peers) != 1 {
		return false
	}
	p := dev.Peers[0]
	all := map[netip.Prefix]bool{}
	for _, a := range p.AllowedIPs {
		all[a] = true
	}
	return p.PublicKey == t.remoteKey && p.Endpoint.Addr().Unmap() == t.remote.Addr() &&
		p.PersistentKeepaliveInterval == wgKeepalive && len(all) == 2 &&
		all[netip.MustParsePrefix("0.0.0.0/0")] && all[netip.MustParsePrefix("::/0")]
}

// ensureWireGuard finds or creates the WireGuard device of side s and fills
// in the mechanism's parameters that are ours to give (client side: dst_ip,
// dst_port, dst_public_key; both: MTU). c.MTU is lowered to what the
// tunnel carries. An existing device is kept and brought in line (its key,
// its peer), never re-created.
func (d *Dataplane) ensureWireGuard(ctx context.Context, c *Conn, s *vwire.End) error {
	m := &s.Side.Mechanism
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	wc, err := d.wireGuard()
	if err != nil {
		if errors.Is(err, wgnl.ErrNotSupported) {
			return errNoWireGuard(s.Kind, err)
		}
		return fmt.Errorf("connect %s: %w", s.Kind, err)
	}
	t, err := d.wireGuardTunnel(s.Kind, *m)
	if err != nil {
		return err
	}
	tmtu, err := vwire.TunnelMTU(d.host, d.opts.TunnelIP, forwarder.MechanismWireGuard, c)
	if err != nil {
		return err
	}

	var dev *wgnl.Device
	existing, err := d.host.LinkByName(s.HostName)
	if err != nil && !vwire.IsNotFound(err) {
		return fmt.Errorf("connect %s: wireguard %s: %w", s.Kind, s.HostName, err)
	}
	if err == nil {
		switch {
		case existing.Attrs().Alias != s.Alias:
			return forwarder.Errorf(forwarder.CodeAlreadyExists, "", "node interface %s exists and is not this connection's", s.HostName)
		case existing.Type() == "wireguard":
			if dev, err = wc.Device(existing.Attrs().Index); err != nil {
				return fmt.Errorf("connect %s: %w", s.Kind, err)
			}
			s.Host = existing
		default:
			// The side was another mechanism before: start over.
			if err := d.host.LinkDel(existing); err != nil && !vwire.IsNotFound(err) {
				return fmt.Errorf("connect %s: replace %s %s: %w", s.Kind, existing.Type(), s.HostName, err)
			}
		}
	}
	if s.Host == nil {
		if dev, err = d.createWireGuard(ctx, wc, c, s, t); err != nil {
			return err
		}
	} else if err := d.syncWireGuard(ctx, wc, s, t, dev); err != nil {
		return err
	}
	if c.MTU > 0 && s.Host.Attrs().MTU != int(c.MTU) {
		if err := d.host.LinkSetMTU(s.Host, int(c.MTU)); err != nil {
			return fmt.Errorf("connect %s: wireguard mtu: %w", s.Kind, err)
		}
	}
	if s.Host.Attrs().Flags&unix.IFF_UP == 0 {
		if err := d.host.LinkSetUp(s.Host); err != nil {
			return fmt.Errorf("connect %s: wireguard up: %w", s.Kind, err)
		}
	}
	if s.Kind == forwarder.SideClient {
		m.Params[forwarder.ParamDstIP] = d.opts.TunnelIP.String()
		m.Params[forwarder.ParamDstPort] = strconv.Itoa(int(dev.ListenPort))
		m.Params[forwarder.ParamDstPublicKey] = dev.PublicKey.String()
	}
	if tmtu > 0 {
		m.Params[forwarder.ParamMTU] = strconv.Itoa(int(tmtu))
	}
	return nil
}

// createWireGuard creates side s's device: on the endpoint side with the
// key and port of our offer, on the client side with a new key pair and
// the first free port.
func (d *Dataplane) createWireGuard(ctx context.Context, wc *wgnl.Client, c *Conn, s *vwire.End, t wgTunnel) (*wgnl.Device, error) {
	// Whatever port is still recorded under this device's name is stale:
	// the device is not there.
	d.forgetDevice(s.HostName)
	var priv wgnl.Key
	var port uint16
	if s.Kind == forwarder.SideEndpoint {
		// The offer stays until the device has its key: a failed
		// Connect may be retried with the same answer.
		o, err := d.offer(s.Kind, t.localKey)
		if err != nil {
			return nil, err
		}
		priv, port = o.priv, o.port
	} else {
		var err error
		if priv, err = wgnl.GenerateKey(); err != nil {
			return nil, err
		}
		d.wg.mu.Lock()
		d.wg.expireLocked(time.Now())
		port, err = d.wg.allocLocked(wgPort{dev: s.HostName})
		d.wg.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	wgl := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: s.HostName, MTU: int(c.MTU)}}
	if err := d.host.LinkAdd(wgl); err != nil {
		d.forgetDevice(s.HostName)
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			return nil, errNoWireGuard(s.Kind, fmt.Errorf("create a wireguard link: %w", err))
		case errors.Is(err, unix.EEXIST):
			return nil, forwarder.Errorf(forwarder.CodeAlreadyExists, "", "node interface %s already exists", s.HostName)
		}
		return nil, fmt.Errorf("connect %s: create wireguard %s: %w", s.Kind, s.HostName, err)
	}
	s.Created = true
	l, err := d.host.LinkByName(s.HostName)
	if err != nil {
		// The rollback needs the link to delete it; this one it cannot see.
		_ = d.host.LinkDel(wgl)
		return nil, fmt.Errorf("connect %s: wireguard %s: %w", s.Kind, s.HostName, err)
	}
	s.Host = l
	if err := d.host.LinkSetAlias(l, s.Alias); err != nil {
		return nil, fmt.Errorf("connect %s: wireguard alias: %w", s.Kind, err)
	}
	// IN6_ADDR_GEN_MODE_NONE: the tunnel is a wire, not an interface of
	// the node.
	_ = d.host.LinkSetIP6AddrGenMode(l, 1)

	idx := l.Attrs().Index
	for attempt := 1; ; attempt++ {
		err := wc.Configure(idx, wgnl.Config{PrivateKey: &priv, ListenPort: &port, ReplacePeers: true, Peers: []wgnl.PeerConfig{t.peerConfig()}})
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EADDRINUSE) || attempt == wgBindAttempts {
			return nil, fmt.Errorf("connect %s: configure wireguard %s: %w", s.Kind, s.HostName, err)
		}
		// A socket we did not know of holds the port.
		var aerr error
		d.wg.mu.Lock()
		d.wg.markLocked(port, wgPort{expires: time.Now().Add(wgForeignTTL)})
		if s.Kind == forwarder.SideEndpoint {
			// The port is in our offer, but the far end follows us to
			// another one as soon as our handshake (we keep alive)
			// reaches it.
			d.log.WarnContext(ctx, "offered WireGuard port taken on the node; listening on another", "conn_id", c.ID, "port", port)
			port = 0 // the kernel chooses
		} else {
			port, aerr = d.wg.allocLocked(wgPort{dev: s.HostName})
		}
		d.wg.mu.Unlock()
		if aerr != nil {
			return nil, aerr
		}
	}
	dev, err := wc.Device(idx)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", s.Kind, err)
	}
	d.wg.mu.Lock()
	d.wg.markLocked(dev.ListenPort, wgPort{dev: s.HostName})
	d.wg.mu.Unlock()
	if s.Kind == forwarder.SideEndpoint {
		d.forgetOffer(t.localKey)
	}
	return dev, nil
}

// syncWireGuard brings an existing device in line with tunnel t, without
// re-creating it: the one peer and, on the endpoint side, our key and port
// (a new offer for this connection replaces them).
func (d *Dataplane) syncWireGuard(ctx context.Context, wc *wgnl.Client, s *vwire.End, t wgTunnel, dev *wgnl.Device) error {
	var cfg wgnl.Config
	var offered *wgOffer
	if s.Kind == forwarder.SideEndpoint && dev.PublicKey != t.localKey {
		o, err := d.offer(s.Kind, t.localKey)
		if err != nil {
			return err
		}
		offered, cfg.PrivateKey, cfg.ListenPort = &o, &o.priv, &o.port
	}
	if offered != nil || !t.peerInLine(dev) {
		cfg.ReplacePeers = true
		cfg.Peers = []wgnl.PeerConfig{t.peerConfig()}
		err := wc.Configure(dev.Ifindex, cfg)
		if errors.Is(err, unix.EADDRINUSE) && cfg.ListenPort != nil {
			// The device keeps its port; the far end follows our
			// handshakes there.
			d.log.WarnContext(ctx, "offered WireGuard port taken on the node; keeping the device's", "device", s.HostName, "port", *cfg.ListenPort)
			cfg.ListenPort = nil
			err = wc.Configure(dev.Ifindex, cfg)
		}
		if err != nil {
			return fmt.Errorf("connect %s: configure wireguard %s: %w", s.Kind, s.HostName, err)
		}
		d.log.InfoContext(ctx, "wireguard device brought in line", "device", s.HostName, "new_key", offered != nil, "peer", t.remote.String())
		if offered != nil {
			dev.PublicKey = t.localKey
		}
		if cfg.ListenPort != nil {
			dev.ListenPort = *cfg.ListenPort
		}
	}
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	if offered != nil {
		delete(d.wg.offers, t.localKey)
		for p, x := range d.wg.ports {
			if x.dev == s.HostName || (p == offered.port && x.dev == "") {
				delete(d.wg.ports, p)
			}
		}
	}
	d.wg.markLocked(dev.ListenPort, wgPort{dev: s.HostName})
	return nil
}
