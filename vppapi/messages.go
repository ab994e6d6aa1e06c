package vppapi

import (
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/af_packet"
	"go.fd.io/govpp/binapi/af_xdp"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ip_neighbor"
	"go.fd.io/govpp/binapi/l2"
	"go.fd.io/govpp/binapi/l3xc"
	"go.fd.io/govpp/binapi/memclnt"
	"go.fd.io/govpp/binapi/memif"
	"go.fd.io/govpp/binapi/tapv2"
	"go.fd.io/govpp/binapi/vpe"
	"go.fd.io/govpp/binapi/vxlan"
)

// BinapiVersion is the VPP release govpp v0.13.0's bundled binapi was
// generated from; the CRCs nsmfwd checks at connect time are that release's.
const BinapiVersion = "25.10-release"

// Messages lists every binary-API message nsmfwd sends or receives. Dial
// checks each one's CRC against the connected VPP.
func Messages() []api.Message {
	return []api.Message{
		&vpe.ShowVersion{}, &vpe.ShowVersionReply{},
		&memclnt.ControlPing{}, &memclnt.ControlPingReply{},
		&interfaces.SwInterfaceDump{}, &interfaces.SwInterfaceDetails{},
		&interfaces.SwInterfaceSetFlags{}, &interfaces.SwInterfaceSetFlagsReply{},
		&interfaces.SwInterfaceTagAddDel{}, &interfaces.SwInterfaceTagAddDelReply{},
		&interfaces.SwInterfaceSetMtu{}, &interfaces.SwInterfaceSetMtuReply{},
		&interfaces.SwInterfaceSetMacAddress{}, &interfaces.SwInterfaceSetMacAddressReply{},
		&interfaces.SwInterfaceSetRxMode{}, &interfaces.SwInterfaceSetRxModeReply{},
		&interfaces.SwInterfaceEvent{}, &interfaces.WantInterfaceEvents{}, &interfaces.WantInterfaceEventsReply{},
		&af_packet.AfPacketCreateV3{}, &af_packet.AfPacketCreateV3Reply{},
		&af_packet.AfPacketDelete{}, &af_packet.AfPacketDeleteReply{},
		&af_xdp.AfXdpCreateV3{}, &af_xdp.AfXdpCreateV3Reply{},
		&af_xdp.AfXdpDelete{}, &af_xdp.AfXdpDeleteReply{},
		&tapv2.TapCreateV3{}, &tapv2.TapCreateV3Reply{},
		&tapv2.TapDeleteV2{}, &tapv2.TapDeleteV2Reply{},
		&memif.MemifSocketFilenameAddDelV2{}, &memif.MemifSocketFilenameAddDelV2Reply{},
		&memif.MemifSocketFilenameDump{}, &memif.MemifSocketFilenameDetails{},
		&memif.MemifCreateV2{}, &memif.MemifCreateV2Reply{},
		&memif.MemifDelete{}, &memif.MemifDeleteReply{},
		&memif.MemifDump{}, &memif.MemifDetails{},
		&l2.SwInterfaceSetL2Xconnect{}, &l2.SwInterfaceSetL2XconnectReply{},
		&l3xc.L3xcUpdate{}, &l3xc.L3xcUpdateReply{},
		&l3xc.L3xcDel{}, &l3xc.L3xcDelReply{},
		&ip_neighbor.IPNeighborAddDel{}, &ip_neighbor.IPNeighborAddDelReply{},
		&interfaces.SwInterfaceAddDelAddress{}, &interfaces.SwInterfaceAddDelAddressReply{},
		&ip.IPAddressDump{}, &ip.IPAddressDetails{},
		&ip.IPRouteAddDel{}, &ip.IPRouteAddDelReply{},
		&interfaces.CreateVlanSubif{}, &interfaces.CreateVlanSubifReply{},
		&interfaces.DeleteSubif{}, &interfaces.DeleteSubifReply{},
		&l2.L2InterfaceVlanTagRewrite{}, &l2.L2InterfaceVlanTagRewriteReply{},
		&l2.BridgeDomainAddDelV2{}, &l2.BridgeDomainAddDelV2Reply{},
		&l2.BridgeDomainDump{}, &l2.BridgeDomainDetails{},
		&l2.SwInterfaceSetL2Bridge{}, &l2.SwInterfaceSetL2BridgeReply{},
	}
}

// VXLANMessages are the vxlan plugin's messages the VXLAN mechanism uses.
// They are optional: a VPP without the plugin serves no VXLAN.
func VXLANMessages() []api.Message {
	return []api.Message{
		&vxlan.VxlanAddDelTunnelV3{}, &vxlan.VxlanAddDelTunnelV3Reply{},
		&vxlan.VxlanTunnelV2Dump{}, &vxlan.VxlanTunnelV2Details{},
	}
}
