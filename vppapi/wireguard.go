package vppapi

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/wireguard"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

const (
	// WireGuardPort is NSM's default WireGuard port; every tunnel of a node
	// listens on it (VPP tells tunnels apart by their keys).
	WireGuardPort = 51820
	// offerTTL bounds how long the private key of an offer waits for the
	// next hop's answer.
	offerTTL = 2 * time.Minute
)

// WireGuardMessages are the wireguard plugin's messages; without them VPP
// serves no WireGuard.
func WireGuardMessages() []api.Message {
	return []api.Message{
		&wireguard.WireguardInterfaceCreate{}, &wireguard.WireguardInterfaceCreateReply{},
		&wireguard.WireguardInterfaceDelete{}, &wireguard.WireguardInterfaceDeleteReply{},
		&wireguard.WireguardPeerAdd{}, &wireguard.WireguardPeerAddReply{},
		&wireguard.WireguardInterfaceDump{}, &wireguard.WireguardInterfaceDetails{},
		&wireguard.WireguardPeersDump{}, &wireguard.WireguardPeersDetails{},
	}
}

// wgKeys holds the private keys of WireGuard offers until the answer
// comes back (as NSM does it, every connection has a key pair of its own).
type wgKeys struct {
	mu   sync.Mutex
	keys map[string]wgKey // by public key, base64
}

type wgKey struct {
	priv    *ecdh.PrivateKey
	created time.Time
}

func newWGKey() (*ecdh.PrivateKey, string, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("wireguard key: %w", err)
	}
	return k, base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), nil
}

func (d *Dataplane) wgReady() bool {
	c := d.current()
	return d.opts.TunnelIP.IsValid() && c != nil && c.Supports(WireGuardMessages()...)
}

// offerWireGuard offers WireGuard for IP payloads with a fresh key pair,
// whose private half waits for the answer.
func (d *Dataplane) offerWireGuard(payload forwarder.Payload) (map[string]string, bool) {
	if payload != forwarder.PayloadIP || !d.wgReady() {
		return nil, false
	}
	k, pub, err := newWGKey()
	if err != nil {
		d.log.Warn("no WireGuard offer", "error", err)
		return nil, false
	}
	d.wg.mu.Lock()
	defer d.wg.mu.Unlock()
	if d.wg.keys == nil {
		d.wg.keys = map[string]wgKey{}
	}
	for p, x := range d.wg.keys {
		if time.Since(x.created) > offerTTL {
			delete(d.wg.keys, p)
		}
	}
	d.wg.keys[pub] = wgKey{priv: k, created: time.Now()}
	return map[string]string{
		forwarder.ParamSrcIP:        d.opts.TunnelIP.String(),
		forwarder.ParamSrcPort:      strconv.Itoa(WireGuardPort),
		forwarder.ParamSrcPublicKey: pub,
	}, true
}

// wgEnds reads a WireGuard side: remote address, port and public key, and
// (endpoint side) our public key from the offer.
func (d *Dataplane) wgEnds(side forwarder.SideKind, m forwarder.Mechanism) (remote netip.Addr, port uint16, remoteKey []byte, err error) {
	field := vwire.ParamsField(side)
	ipKey, portKey, keyKey := forwarder.ParamSrcIP, forwarder.ParamSrcPort, forwarder.ParamSrcPublicKey
	if side == forwarder.SideEndpoint {
		ipKey, portKey, keyKey = forwarder.ParamDstIP, forwarder.ParamDstPort, forwarder.ParamDstPublicKey
	}
	if remote, err = netip.ParseAddr(m.Param(ipKey)); err != nil || remote.Is4() != d.opts.TunnelIP.Is4() {
		return remote, 0, nil, forwarder.Errorf(forwarder.CodeInvalidArgument, field+ipKey, "missing or invalid remote tunnel address %q", m.Param(ipKey))
	}
	port = WireGuardPort
	if v := m.Param(portKey); v != "" {
		if port, err = forwarder.ParsePort(v); err != nil {
			return remote, 0, nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: field + portKey, Err: err}
		}
	}
	if remoteKey, err = base64.StdEncoding.DecodeString(m.Param(keyKey)); err != nil || len(remoteKey) != 32 {
		return remote, 0, nil, forwarder.Errorf(forwarder.CodeInvalidArgument, field+keyKey, "missing or invalid WireGuard public key %q", m.Param(keyKey))
	}
	return remote.Unmap(), port, remoteKey, nil
}

// wireguardSide builds a WireGuard side: a VPP WireGuard interface of the
// connection's own (its own key pair) with the far forwarder as its one
// peer, carrying everything (0.0.0.0/0, ::/0). IP payload only.
func (d *Dataplane) wireguardSide(ctx context.Context, vc *Conn, c *forwarder.Conn, s *side, tag string, ipMode bool) error {
	if !ipMode {
		return forwarder.Errorf(forwarder.CodeInvalidArgument, "connection.payload", "WireGuard carries IP payload, not ETHERNET")
	}
	if !d.opts.TunnelIP.IsValid() || !vc.Supports(WireGuardMessages()...) {
		return forwarder.Errorf(forwarder.CodeFailedPrecondition, "", "VPP %s: no wireguard plugin or no tunnel address", vc.Version())
	}
	m := &s.s.Mechanism
	remote, port, remoteKey, err := d.wgEnds(s.kind, *m)
	if err != nil {
		return err
	}
	mtu, err := vwire.TunnelMTU(d.host, d.opts.TunnelIP, forwarder.MechanismWireGuard, c)
	if err != nil {
		return err
	}
	if m.Params == nil {
		m.Params = map[string]string{}
	}
	if s.vif == nil {
		var priv *ecdh.PrivateKey
		if s.kind == forwarder.SideEndpoint {
			pub := m.Param(forwarder.ParamSrcPublicKey)
			d.wg.mu.Lock()
			k, ok := d.wg.keys[pub]
			delete(d.wg.keys, pub)
			d.wg.mu.Unlock()
			if !ok {
				return forwarder.Errorf(forwarder.CodeFailedPrecondition, vwire.ParamsField(s.kind)+forwarder.ParamSrcPublicKey,
					"no private key for WireGuard offer %q (expired, or offered before a restart): request again", pub)
			}
			priv = k.priv
		} else if priv, _, err = newWGKey(); err != nil {
			return err
		}
		var rep wireguard.WireguardInterfaceCreateReply
		req := &wireguard.WireguardInterfaceCreate{Interface: wireguard.WireguardInterface{
			UserInstance: ^uint32(0), PrivateKey: priv.Bytes(), Port: WireGuardPort, SrcIP: addr(d.opts.TunnelIP),
		}}
		if err := vc.Invoke(ctx, req, &rep); err != nil {
			return fmt.Errorf("wireguard interface: %w", err)
		}
		v := vppIf{index: rep.SwIfIndex, devType: "wireguard", name: fmt.Sprintf("wg(%d)", rep.SwIfIndex)}
		s.vif, s.vifNew = &v, true
		if err := setTag(ctx, vc, v.index, tag); err != nil {
			return err
		}
		peer := wireguard.WireguardPeer{
			PublicKey: remoteKey, Port: port, PersistentKeepalive: 10, Endpoint: addr(remote), SwIfIndex: v.index,
			AllowedIps: []ip_types.Prefix{{Address: ip_types.Address{Af: ip_types.ADDRESS_IP4}}, {Address: ip_types.Address{Af: ip_types.ADDRESS_IP6}}},
		}
		peer.NAllowedIps = uint8(len(peer.AllowedIps))
		if err := vc.Invoke(ctx, &wireguard.WireguardPeerAdd{Peer: peer}, &wireguard.WireguardPeerAddReply{}); err != nil {
			return fmt.Errorf("wireguard peer %s: %w", remote, err)
		}
		if s.kind == forwarder.SideClient {
			m.Params[forwarder.ParamDstPublicKey] = base64.StdEncoding.EncodeToString(priv.PublicKey().Bytes())
		}
	}
	if s.kind == forwarder.SideClient {
		m.Params[forwarder.ParamDstIP] = d.opts.TunnelIP.String()
		m.Params[forwarder.ParamDstPort] = strconv.Itoa(WireGuardPort)
	}
	if mtu > 0 {
		m.Params[forwarder.ParamMTU] = strconv.Itoa(int(mtu))
	}
	s.peerMAC, s.nbma = nil, true
	return nil
}

// deleteWireGuard deletes a WireGuard interface with its peer.
func deleteWireGuard(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) error {
	if err := c.Invoke(ctx, &wireguard.WireguardInterfaceDelete{SwIfIndex: idx}, &wireguard.WireguardInterfaceDeleteReply{}); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("delete wireguard interface %d: %w", idx, err)
	}
	return nil
}
