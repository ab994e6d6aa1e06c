package vppapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/af_packet"
	"go.fd.io/govpp/binapi/af_xdp"
	"go.fd.io/govpp/binapi/ethernet_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/memif"
	"go.fd.io/govpp/binapi/tapv2"
)

// Kernel interface modes: how a KERNEL side reaches VPP.
const (
	// ModeAFPacket attaches the host end of a veth pair with af_packet (v3).
	ModeAFPacket = "af_packet"
	// ModeAFXDP attaches the host end of a veth pair with AF_XDP.
	ModeAFXDP = "af_xdp"
	// ModeTap creates a tap v2 interface directly in the side's namespace
	// (needs /dev/vhost-net).
	ModeTap = "tap"
)

// vppIf is a VPP interface nsmfwd made for one side.
type vppIf struct {
	index   interface_types.InterfaceIndex
	devType string // af_packet, af_xdp, virtio (tap), memif
	name    string // VPP's interface name
	// hostIndex is the ifindex of an AF_XDP interface's host interface,
	// when nsmfwd created it (see Dataplane.deleteIf).
	hostIndex int
}

func mac(hw net.HardwareAddr) ethernet_types.MacAddress {
	var m ethernet_types.MacAddress
	copy(m[:], hw)
	return m
}

// createAFPacket attaches host interface hostIf to VPP with rings of
// geometry g (see afPacketGeometry.request for the virtio-net header).
func createAFPacket(ctx context.Context, c *Conn, hostIf string, hw net.HardwareAddr, g afPacketGeometry) (vppIf, error) {
	req := g.request(hostIf)
	req.UseRandomHwAddr, req.HwAddr = hw == nil, mac(hw)
	var rep af_packet.AfPacketCreateV3Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		return vppIf{}, fmt.Errorf("af_packet attach %s: %w", hostIf, err)
	}
	return vppIf{index: rep.SwIfIndex, devType: "af_packet", name: "host-" + hostIf}, nil
}

// createAFXDP attaches host interface hostIf to VPP with AF_XDP.
// prog, when not empty, is the XDP program's object file VPP loads
// instead of its default one.
func createAFXDP(ctx context.Context, c *Conn, hostIf, name string, hw net.HardwareAddr, queue int, prog string) (vppIf, error) {
	req := &af_xdp.AfXdpCreateV3{HostIf: hostIf, Name: name, RxqNum: 1, Mode: af_xdp.AF_XDP_API_MODE_AUTO,
		RxqSize: uint16(queue), TxqSize: uint16(queue), Prog: prog}
	var rep af_xdp.AfXdpCreateV3Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		return vppIf{}, fmt.Errorf("af_xdp attach %s: %w", hostIf, err)
	}
	v := vppIf{index: rep.SwIfIndex, devType: "af_xdp", name: name}
	if hw != nil {
		if err := setMAC(ctx, c, v.index, hw); err != nil {
			return v, err
		}
	}
	return v, nil
}

// createTap creates a tap v2 interface named ifName in the namespace at
// nsPath, VPP's end with MAC hw (nil: random).
func createTap(ctx context.Context, c *Conn, nsPath, ifName, tag string, mtu uint32, hw net.HardwareAddr, ring int) (vppIf, error) {
	req := &tapv2.TapCreateV3{
		ID:               ^uint32(0),
		UseRandomMac:     hw == nil,
		MacAddress:       mac(hw),
		NumRxQueues:      1,
		NumTxQueues:      1,
		TxRingSz:         uint16(ring),
		RxRingSz:         uint16(ring),
		HostNamespaceSet: true,
		HostNamespace:    nsPath,
		HostIfNameSet:    true,
		HostIfName:       ifName,
		HostMtuSet:       mtu > 0,
		HostMtuSize:      mtu,
		Tag:              tag,
	}
	var rep tapv2.TapCreateV3Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		return vppIf{}, fmt.Errorf("tap create %s: %w", ifName, err)
	}
	return vppIf{index: rep.SwIfIndex, devType: "virtio", name: fmt.Sprintf("tap%d", rep.SwIfIndex)}, nil
}

// addMemifSocket registers a socket file and returns VPP's socket id.
func addMemifSocket(ctx context.Context, c *Conn, path string) (uint32, error) {
	req := &memif.MemifSocketFilenameAddDelV2{IsAdd: true, SocketID: ^uint32(0), SocketFilename: path}
	var rep memif.MemifSocketFilenameAddDelV2Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		return 0, fmt.Errorf("memif socket %s: %w", path, err)
	}
	return rep.SocketID, nil
}

func delMemifSocket(ctx context.Context, c *Conn, id uint32) error {
	req := &memif.MemifSocketFilenameAddDelV2{IsAdd: false, SocketID: id}
	if err := c.Invoke(ctx, req, &memif.MemifSocketFilenameAddDelV2Reply{}); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("memif socket %d delete: %w", id, err)
	}
	return nil
}

// createMemif creates a master memif on socket sock.
func createMemif(ctx context.Context, c *Conn, sock uint32, ip bool, hw net.HardwareAddr, r Rings) (vppIf, error) {
	mode := memif.MEMIF_MODE_API_ETHERNET
	if ip {
		mode = memif.MEMIF_MODE_API_IP
	}
	req := &memif.MemifCreateV2{
		Role:       memif.MEMIF_ROLE_API_MASTER,
		Mode:       mode,
		RxQueues:   1,
		TxQueues:   1,
		SocketID:   sock,
		RingSize:   uint32(r.MemifRing),
		BufferSize: uint16(r.MemifBuffer),
		HwAddr:     mac(hw),
	}
	var rep memif.MemifCreateV2Reply
	if err := c.Invoke(ctx, req, &rep); err != nil {
		return vppIf{}, fmt.Errorf("memif create: %w", err)
	}
	return vppIf{index: rep.SwIfIndex, devType: "memif", name: fmt.Sprintf("memif%d/0", sock)}, nil
}

func setTag(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex, tag string) error {
	req := &interfaces.SwInterfaceTagAddDel{IsAdd: true, SwIfIndex: idx, Tag: tag}
	if err := c.Invoke(ctx, req, &interfaces.SwInterfaceTagAddDelReply{}); err != nil {
		return fmt.Errorf("tag interface %d: %w", idx, err)
	}
	return nil
}

func setMAC(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex, hw net.HardwareAddr) error {
	req := &interfaces.SwInterfaceSetMacAddress{SwIfIndex: idx, MacAddress: mac(hw)}
	if err := c.Invoke(ctx, req, &interfaces.SwInterfaceSetMacAddressReply{}); err != nil {
		return fmt.Errorf("set mac of interface %d: %w", idx, err)
	}
	return nil
}

func setMTU(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex, mtu uint32) error {
	req := &interfaces.SwInterfaceSetMtu{SwIfIndex: idx, Mtu: []uint32{mtu, 0, 0, 0}}
	if err := c.Invoke(ctx, req, &interfaces.SwInterfaceSetMtuReply{}); err != nil {
		return fmt.Errorf("set mtu of interface %d: %w", idx, err)
	}
	return nil
}

func setUp(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex) error {
	req := &interfaces.SwInterfaceSetFlags{SwIfIndex: idx, Flags: interface_types.IF_STATUS_API_FLAG_ADMIN_UP}
	if err := c.Invoke(ctx, req, &interfaces.SwInterfaceSetFlagsReply{}); err != nil {
		return fmt.Errorf("interface %d up: %w", idx, err)
	}
	return nil
}

// deleteIf removes a VPP interface nsmfwd created, by its device type.
func deleteIf(ctx context.Context, c *Conn, v vppIf) error {
	var req, rep api.Message
	switch dev := v.kind(); dev {
	case "af_packet":
		req, rep = &af_packet.AfPacketDelete{HostIfName: strings.TrimPrefix(v.name, "host-")}, &af_packet.AfPacketDeleteReply{}
	case "af_xdp":
		req, rep = &af_xdp.AfXdpDelete{SwIfIndex: v.index}, &af_xdp.AfXdpDeleteReply{}
	case "virtio":
		req, rep = &tapv2.TapDeleteV2{SwIfIndex: v.index}, &tapv2.TapDeleteV2Reply{}
	case "memif":
		req, rep = &memif.MemifDelete{SwIfIndex: v.index}, &memif.MemifDeleteReply{}
	case "vxlan":
		return deleteVXLAN(ctx, c, v.index)
	case "wireguard":
		return deleteWireGuard(ctx, c, v.index)
	default:
		return fmt.Errorf("delete interface %s: unknown device type %q", v.name, v.devType)
	}
	if err := c.Invoke(ctx, req, rep); err != nil && !isNoSuchEntry(err) {
		return fmt.Errorf("delete interface %s: %w", v.name, err)
	}
	return nil
}

// kind is the interface's device type as created ("af_packet", "vxlan",
// "wireguard"...), whether it came from a create or a dump.
func (v vppIf) kind() string {
	// Dumps say "AF_XDP interface", "af-packet", "Wireguard Tunnel".
	dev := strings.ToLower(strings.ReplaceAll(v.devType, "-", "_"))
	if f := strings.Fields(dev); len(f) > 0 {
		dev = f[0]
	}
	return dev
}

// Rx modes of the interfaces the dataplane creates.
const (
	// RxModeInterrupt: VPP reads an interface when it signals (an fd or
	// eventfd in VPP's epoll), and sleeps when none does.
	RxModeInterrupt = "interrupt"
	// RxModePolling: VPP reads the interface on every turn of its loop
	// (a busy core, the lowest latency).
	RxModePolling = "polling"
)

// setRxMode sets the rx mode of every rx queue of the interface idx.
func setRxMode(ctx context.Context, c *Conn, idx interface_types.InterfaceIndex, mode string) error {
	m := interface_types.RX_MODE_API_INTERRUPT
	if mode == RxModePolling {
		m = interface_types.RX_MODE_API_POLLING
	}
	if err := c.Invoke(ctx, &interfaces.SwInterfaceSetRxMode{SwIfIndex: idx, Mode: m}, &interfaces.SwInterfaceSetRxModeReply{}); err != nil {
		return fmt.Errorf("rx mode %s on interface %d: %w", mode, idx, err)
	}
	return nil
}

func isNoSuchEntry(err error) bool {
	var e api.VPPApiError
	return errors.As(err, &e) && (e == api.NO_SUCH_ENTRY || e == api.INVALID_SW_IF_INDEX || e == api.INVALID_INTERFACE)
}

// dumpTagged returns the VPP interfaces whose tag starts with prefix, by tag.
func dumpTagged(ctx context.Context, c *Conn, prefix string) (map[string]vppIf, error) {
	all, err := Dump[*interfaces.SwInterfaceDetails](ctx, c, &interfaces.SwInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)})
	if err != nil {
		return nil, err
	}
	out := map[string]vppIf{}
	for _, d := range all {
		if strings.HasPrefix(d.Tag, prefix) {
			out[d.Tag] = vppIf{index: d.SwIfIndex, devType: d.InterfaceDevType, name: d.InterfaceName}
		}
	}
	return out, nil
}
