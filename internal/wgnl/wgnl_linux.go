package wgnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// FamilyName is the generic netlink family of WireGuard (WG_GENL_NAME).
const FamilyName = "wireguard"

// The uapi of include/uapi/linux/wireguard.h.
const (
	familyVersion = 1 // WG_GENL_VERSION

	cmdGetDevice = 0 // WG_CMD_GET_DEVICE
	cmdSetDevice = 1 // WG_CMD_SET_DEVICE

	deviceAIfindex    = 1 // WGDEVICE_A_IFINDEX, NLA_U32
	deviceAIfname     = 2 // WGDEVICE_A_IFNAME, NLA_NUL_STRING
	deviceAPrivateKey = 3 // WGDEVICE_A_PRIVATE_KEY
	deviceAPublicKey  = 4 // WGDEVICE_A_PUBLIC_KEY
	deviceAFlags      = 5 // WGDEVICE_A_FLAGS, NLA_U32
	deviceAListenPort = 6 // WGDEVICE_A_LISTEN_PORT, NLA_U16
	deviceAFwmark     = 7 // WGDEVICE_A_FWMARK, NLA_U32
	deviceAPeers      = 8 // WGDEVICE_A_PEERS, NLA_NESTED

	deviceFReplacePeers = 1 << 0 // WGDEVICE_F_REPLACE_PEERS

	peerAPublicKey         = 1  // WGPEER_A_PUBLIC_KEY
	peerAFlags             = 3  // WGPEER_A_FLAGS, NLA_U32
	peerAEndpoint          = 4  // WGPEER_A_ENDPOINT, struct sockaddr_in or sockaddr_in6
	peerAKeepaliveInterval = 5  // WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, NLA_U16
	peerALastHandshakeTime = 6  // WGPEER_A_LAST_HANDSHAKE_TIME, struct __kernel_timespec
	peerARxBytes           = 7  // WGPEER_A_RX_BYTES, NLA_U64
	peerATxBytes           = 8  // WGPEER_A_TX_BYTES, NLA_U64
	peerAAllowedIPs        = 9  // WGPEER_A_ALLOWEDIPS, NLA_NESTED
	peerAProtocolVersion   = 10 // WGPEER_A_PROTOCOL_VERSION, NLA_U32

	peerFRemoveMe          = 1 << 0 // WGPEER_F_REMOVE_ME
	peerFReplaceAllowedIPs = 1 << 1 // WGPEER_F_REPLACE_ALLOWEDIPS
	peerFUpdateOnly        = 1 << 2 // WGPEER_F_UPDATE_ONLY

	allowedIPAFamily   = 1 // WGALLOWEDIP_A_FAMILY, NLA_U16
	allowedIPAIPAddr   = 2 // WGALLOWEDIP_A_IPADDR, struct in_addr or in6_addr
	allowedIPACidrMask = 3 // WGALLOWEDIP_A_CIDR_MASK, NLA_U8

	sizeofSockaddrIn     = 16
	sizeofSockaddrIn6    = 28
	sizeofKernelTimespec = 16
	genlHeaderLen        = 4 // struct genlmsghdr
	listElement          = 0 // the type of each element of a nested list
	nlaNested            = unix.NLA_F_NESTED
	nlaTypeMask          = nl.NLA_TYPE_MASK

	// requestTimeout bounds, in seconds, how long a request waits for the
	// kernel.
	requestTimeout = 10
)

// ErrNotSupported says the running kernel has no WireGuard: the generic
// netlink family is absent (and the kernel could not load a module for it).
// It matches errors.ErrUnsupported too.
var ErrNotSupported error = notSupportedError{}

type notSupportedError struct{}

func (notSupportedError) Error() string {
	return "the kernel has no WireGuard (no \"" + FamilyName + "\" generic netlink family: the wireguard module is missing)"
}

func (notSupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

// Device is what WG_CMD_GET_DEVICE reports of a device.
type Device struct {
	Ifindex    int
	Name       string
	PrivateKey Key
	PublicKey  Key
	ListenPort uint16
	Fwmark     uint32
	Peers      []Peer
}

// Peer is one peer of a Device.
type Peer struct {
	PublicKey Key
	// Endpoint is where the device sends to the peer: the configured one
	// or, once the peer has sent authenticated packets from elsewhere,
	// that address (WireGuard's roaming). Invalid: none yet.
	Endpoint netip.AddrPort
	// PersistentKeepaliveInterval in seconds; 0 is off.
	PersistentKeepaliveInterval uint16
	// LastHandshake is the time of the last completed handshake; zero:
	// never.
	LastHandshake   time.Time
	RxBytes         uint64
	TxBytes         uint64
	AllowedIPs      []netip.Prefix
	ProtocolVersion uint32
}

// Config is a WG_CMD_SET_DEVICE request: what is nil or empty is left as
// it is.
type Config struct {
	PrivateKey *Key
	// ListenPort 0 lets the kernel choose a free port.
	ListenPort *uint16
	// ReplacePeers removes every peer not in Peers.
	ReplacePeers bool
	Peers        []PeerConfig
}

// PeerConfig adds, updates or removes one peer.
type PeerConfig struct {
	PublicKey Key
	// Remove removes the peer.
	Remove bool
	// UpdateOnly changes the peer only if it exists.
	UpdateOnly bool
	// Endpoint, when valid, is where to send to the peer.
	Endpoint netip.AddrPort
	// PersistentKeepaliveInterval in seconds (0: off); nil leaves it.
	PersistentKeepaliveInterval *uint16
	// ReplaceAllowedIPs removes the allowed IPs not in AllowedIPs.
	ReplaceAllowedIPs bool
	AllowedIPs        []netip.Prefix
}

var native = binary.NativeEndian

func u16(v uint16) []byte { return native.AppendUint16(nil, v) }
func u32(v uint32) []byte { return native.AppendUint32(nil, v) }

// getAttrs are the attributes of a WG_CMD_GET_DEVICE request.
func getAttrs(ifindex int) []*nl.RtAttr {
	return []*nl.RtAttr{nl.NewRtAttr(deviceAIfindex, u32(uint32(ifindex)))}
}

// setAttrs are the attributes of a WG_CMD_SET_DEVICE request.
func setAttrs(ifindex int, cfg Config) ([]*nl.RtAttr, error) {
	attrs := []*nl.RtAttr{nl.NewRtAttr(deviceAIfindex, u32(uint32(ifindex)))}
	if cfg.PrivateKey != nil {
		attrs = append(attrs, nl.NewRtAttr(deviceAPrivateKey, cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		attrs = append(attrs, nl.NewRtAttr(deviceAListenPort, u16(*cfg.ListenPort)))
	}
	if cfg.ReplacePeers {
		attrs = append(attrs, nl.NewRtAttr(deviceAFlags, u32(deviceFReplacePeers)))
	}
	if len(cfg.Peers) == 0 {
		return attrs, nil
	}
	peers := nl.NewRtAttr(nlaNested|deviceAPeers, nil)
	for _, p := range cfg.Peers {
		pa := peers.AddRtAttr(nlaNested|listElement, nil)
		pa.AddRtAttr(peerAPublicKey, p.PublicKey[:])
		var flags uint32
		if p.Remove {
			flags |= peerFRemoveMe
		}
		if p.ReplaceAllowedIPs {
			flags |= peerFReplaceAllowedIPs
		}
		if p.UpdateOnly {
			flags |= peerFUpdateOnly
		}
		if flags != 0 {
			pa.AddRtAttr(peerAFlags, u32(flags))
		}
		if p.Endpoint.IsValid() {
			pa.AddRtAttr(peerAEndpoint, sockaddr(p.Endpoint))
		}
		if p.PersistentKeepaliveInterval != nil {
			pa.AddRtAttr(peerAKeepaliveInterval, u16(*p.PersistentKeepaliveInterval))
		}
		if len(p.AllowedIPs) > 0 {
			ips := pa.AddRtAttr(nlaNested|peerAAllowedIPs, nil)
			for _, pfx := range p.AllowedIPs {
				if !pfx.IsValid() {
					return nil, fmt.Errorf("wireguard peer %s: invalid allowed IP prefix", p.PublicKey)
				}
				a := pfx.Masked().Addr().Unmap()
				bits := pfx.Bits()
				if pfx.Addr().Is4In6() {
					bits -= 96
				}
				family := uint16(unix.AF_INET6)
				if a.Is4() {
					family = unix.AF_INET
				}
				ip := ips.AddRtAttr(nlaNested|listElement, nil)
				ip.AddRtAttr(allowedIPAFamily, u16(family))
				ip.AddRtAttr(allowedIPAIPAddr, a.AsSlice())
				ip.AddRtAttr(allowedIPACidrMask, []byte{byte(bits)})
			}
		}
	}
	return append(attrs, peers), nil
}

// sockaddr is the struct sockaddr_in or sockaddr_in6 of ap: family in host
// order, port in network order.
func sockaddr(ap netip.AddrPort) []byte {
	a := ap.Addr().Unmap()
	if a.Is4() {
		b := make([]byte, sizeofSockaddrIn)
		native.PutUint16(b[0:2], unix.AF_INET)
		binary.BigEndian.PutUint16(b[2:4], ap.Port())
		ip := a.As4()
		copy(b[4:8], ip[:])
		return b
	}
	b := make([]byte, sizeofSockaddrIn6) // flowinfo and scope id 0
	native.PutUint16(b[0:2], unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:4], ap.Port())
	ip := a.As16()
	copy(b[8:24], ip[:])
	return b
}

func parseSockaddr(b []byte) (netip.AddrPort, error) {
	if len(b) < 4 {
		return netip.AddrPort{}, fmt.Errorf("endpoint: %d bytes", len(b))
	}
	port := binary.BigEndian.Uint16(b[2:4])
	switch native.Uint16(b[0:2]) {
	case unix.AF_INET:
		if len(b) >= sizeofSockaddrIn {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
		}
	case unix.AF_INET6:
		if len(b) >= sizeofSockaddrIn6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), port), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("endpoint: family %d in %d bytes", native.Uint16(b[0:2]), len(b))
}

// body is a generic netlink message body: the genlmsghdr, then attrs.
func body(cmd uint8, attrs []*nl.RtAttr) []byte {
	out := (&nl.Genlmsg{Command: cmd, Version: familyVersion}).Serialize()
	for _, a := range attrs {
		out = append(out, a.Serialize()...)
	}
	return out
}

func attrsOf(b []byte) ([]syscall.NetlinkRouteAttr, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return nil, fmt.Errorf("wireguard: malformed attributes: %w", err)
	}
	return attrs, nil
}

// parseDevice decodes the messages of a WG_CMD_GET_DEVICE dump (each a
// genlmsghdr and attributes). A device whose peers do not fit one message
// continues in the next, and so may a peer: the kernel repeats its public
// key, and adjacent entries of one key are one peer.
func parseDevice(msgs [][]byte) (*Device, error) {
	d := &Device{}
	for _, m := range msgs {
		if len(m) < genlHeaderLen {
			return nil, errors.New("wireguard: short message")
		}
		attrs, err := attrsOf(m[genlHeaderLen:])
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			v := a.Value
			switch a.Attr.Type & nlaTypeMask {
			case deviceAIfindex:
				if len(v) >= 4 {
					d.Ifindex = int(native.Uint32(v))
				}
			case deviceAIfname:
				d.Name = unix.ByteSliceToString(v)
			case deviceAPrivateKey:
				copy(d.PrivateKey[:], v)
			case deviceAPublicKey:
				copy(d.PublicKey[:], v)
			case deviceAListenPort:
				if len(v) >= 2 {
					d.ListenPort = native.Uint16(v)
				}
			case deviceAFwmark:
				if len(v) >= 4 {
					d.Fwmark = native.Uint32(v)
				}
			case deviceAPeers:
				if err := d.addPeers(v); err != nil {
					return nil, err
				}
			}
		}
	}
	return d, nil
}

func (d *Device) addPeers(b []byte) error {
	list, err := attrsOf(b)
	if err != nil {
		return err
	}
	for _, e := range list {
		p, err := parsePeer(e.Value)
		if err != nil {
			return err
		}
		if n := len(d.Peers); n > 0 && d.Peers[n-1].PublicKey == p.PublicKey {
			d.Peers[n-1].AllowedIPs = append(d.Peers[n-1].AllowedIPs, p.AllowedIPs...)
			continue
		}
		d.Peers = append(d.Peers, p)
	}
	return nil
}

func parsePeer(b []byte) (Peer, error) {
	var p Peer
	attrs, err := attrsOf(b)
	if err != nil {
		return p, err
	}
	for _, a := range attrs {
		v := a.Value
		switch a.Attr.Type & nlaTypeMask {
		case peerAPublicKey:
			copy(p.PublicKey[:], v)
		case peerAEndpoint:
			if p.Endpoint, err = parseSockaddr(v); err != nil {
				return p, fmt.Errorf("wireguard peer %s: %w", p.PublicKey, err)
			}
		case peerAKeepaliveInterval:
			if len(v) >= 2 {
				p.PersistentKeepaliveInterval = native.Uint16(v)
			}
		case peerALastHandshakeTime:
			if len(v) >= sizeofKernelTimespec {
				sec, nsec := int64(native.Uint64(v[0:8])), int64(native.Uint64(v[8:16]))
				if sec != 0 || nsec != 0 {
					p.LastHandshake = time.Unix(sec, nsec)
				}
			}
		case peerARxBytes:
			if len(v) >= 8 {
				p.RxBytes = native.Uint64(v)
			}
		case peerATxBytes:
			if len(v) >= 8 {
				p.TxBytes = native.Uint64(v)
			}
		case peerAProtocolVersion:
			if len(v) >= 4 {
				p.ProtocolVersion = native.Uint32(v)
			}
		case peerAAllowedIPs:
			ips, err := attrsOf(v)
			if err != nil {
				return p, err
			}
			for _, ip := range ips {
				pfx, err := parseAllowedIP(ip.Value)
				if err != nil {
					return p, fmt.Errorf("wireguard peer %s: %w", p.PublicKey, err)
				}
				p.AllowedIPs = append(p.AllowedIPs, pfx)
			}
		}
	}
	return p, nil
}

func parseAllowedIP(b []byte) (netip.Prefix, error) {
	attrs, err := attrsOf(b)
	if err != nil {
		return netip.Prefix{}, err
	}
	var family uint16
	var addr []byte
	bits := -1
	for _, a := range attrs {
		switch a.Attr.Type & nlaTypeMask {
		case allowedIPAFamily:
			if len(a.Value) >= 2 {
				family = native.Uint16(a.Value)
			}
		case allowedIPAIPAddr:
			addr = a.Value
		case allowedIPACidrMask:
			if len(a.Value) >= 1 {
				bits = int(a.Value[0])
			}
		}
	}
	var ip netip.Addr
	switch {
	case family == unix.AF_INET && len(addr) >= 4:
		ip = netip.AddrFrom4([4]byte(addr[:4]))
	case family == unix.AF_INET6 && len(addr) >= 16:
		ip = netip.AddrFrom16([16]byte(addr[:16]))
	default:
		return netip.Prefix{}, fmt.Errorf("allowed IP: family %d, %d address bytes", family, len(addr))
	}
	pfx := netip.PrefixFrom(ip, bits)
	if !pfx.IsValid() {
		return netip.Prefix{}, fmt.Errorf("allowed IP %s: mask /%d", ip, bits)
	}
	return pfx, nil
}

// Client talks to the kernel's WireGuard in one network namespace (devices
// are named by ifindex in the namespace of the socket). It is safe for
// concurrent use.
type Client struct {
	sh     *nl.SocketHandle
	family uint16
}

// Open opens a generic netlink socket in ns (netns.None(): the calling
// thread's namespace) and resolves the family, which makes the kernel load
// its wireguard module if it can. Without WireGuard in the kernel the
// error matches ErrNotSupported.
func Open(ns netns.NsHandle) (*Client, error) {
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("wireguard: generic netlink socket: %w", err)
	}
	tv := unix.Timeval{Sec: requestTimeout}
	errs := []error{s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv), s.SetExtAck(true)}
	if err := errors.Join(errs...); err != nil {
		s.Close()
		return nil, fmt.Errorf("wireguard: generic netlink socket: %w", err)
	}
	c := &Client{sh: &nl.SocketHandle{Socket: s}}
	if c.family, err = c.resolveFamily(); err != nil {
		s.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the socket.
func (c *Client) Close() {
	if c != nil && c.sh != nil {
		c.sh.Close()
	}
}

func (c *Client) request(typ uint16, flags int, cmd, version uint8, attrs ...*nl.RtAttr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(typ), flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_GENERIC: c.sh}
	req.AddData(&nl.Genlmsg{Command: cmd, Version: version})
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}

func (c *Client) resolveFamily() (uint16, error) {
	req := c.request(nl.GENL_ID_CTRL, 0, nl.GENL_CTRL_CMD_GETFAMILY, nl.GENL_CTRL_VERSION,
		nl.NewRtAttr(nl.GENL_CTRL_ATTR_FAMILY_NAME, nl.ZeroTerminated(FamilyName)))
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if errors.Is(err, unix.ENOENT) {
		return 0, ErrNotSupported
	}
	if err != nil {
		return 0, fmt.Errorf("wireguard: resolve generic netlink family %q: %w", FamilyName, err)
	}
	for _, m := range msgs {
		if len(m) < genlHeaderLen {
			continue
		}
		attrs, err := attrsOf(m[genlHeaderLen:])
		if err != nil {
			return 0, err
		}
		for _, a := range attrs {
			if a.Attr.Type&nlaTypeMask == nl.GENL_CTRL_ATTR_FAMILY_ID && len(a.Value) >= 2 {
				return native.Uint16(a.Value), nil
			}
		}
	}
	return 0, fmt.Errorf("wireguard: generic netlink family %q: no id in the answer", FamilyName)
}

// Device reads the device at ifindex. A link that is not a WireGuard device
// is EOPNOTSUPP, a missing one ENODEV.
func (c *Client) Device(ifindex int) (*Device, error) {
	req := c.request(c.family, unix.NLM_F_DUMP, cmdGetDevice, familyVersion, getAttrs(ifindex)...)
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, fmt.Errorf("wireguard get device %d: %w", ifindex, err)
	}
	d, err := parseDevice(msgs)
	if err != nil {
		return nil, fmt.Errorf("wireguard get device %d: %w", ifindex, err)
	}
	return d, nil
}

// Configure applies cfg to the device at ifindex.
func (c *Client) Configure(ifindex int, cfg Config) error {
	attrs, err := setAttrs(ifindex, cfg)
	if err != nil {
		return err
	}
	req := c.request(c.family, unix.NLM_F_ACK, cmdSetDevice, familyVersion, attrs...)
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("wireguard set device %d: %w", ifindex, err)
	}
	return nil
}
