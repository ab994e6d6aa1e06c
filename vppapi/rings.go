package vppapi

import (
	"fmt"
	"math/bits"

	"go.fd.io/govpp/binapi/af_packet"
)

// Rings size the rings of the interfaces the dataplane creates for
// connections. VPP's own defaults are sized for NICs, not for one
// workload's interface: an af_packet interface would map about 12 MiB of
// ring, an AF_XDP one pin 512 of VPP's buffers, a memif 4 MiB. The
// defaults here keep a connection's VPP memory to a few MiB at the cost of
// GSO on af_packet (see docs/operations.md, "Memory").
type Rings struct {
	// AFPacketRxBlock is the size in bytes of each of the 160 blocks of an
	// af_packet rx ring (TPACKET_V3; VPP fixes the block count), a
	// multiple of 4096. A block must hold the largest frame: below
	// GSOBlock nsmfwd turns segmentation offload off on the workload's
	// end of the veth, so frames never exceed the MTU, and raises the
	// block to fit the MTU. Default 8192 (1.25 MiB of ring).
	AFPacketRxBlock int
	// AFPacketTxFrames is the number of frames of an af_packet tx ring
	// (one block) without GSO. Frames are 2048 bytes, or as large as the
	// MTU needs. (With GSO the ring has 16 frames of 66 KiB.) Default 128.
	AFPacketTxFrames int
	// AFXDPQueue is the size of an AF_XDP interface's rx and tx queues
	// (a power of two, 256 to 32768); the fill queue pins as many of
	// VPP's buffers. Default 256.
	AFXDPQueue int
	// MemifRing is the number of slots of a memif ring (a power of two);
	// VPP as master allocates them for both directions. Default 256.
	MemifRing int
	// MemifBuffer is the size of a memif slot's buffer. Default 2048.
	MemifBuffer int
	// TapRing is the size of a tap v2 interface's rx and tx rings (a power
	// of two). Default 256.
	TapRing int
}

// GSOBlock is the smallest af_packet rx block that holds a 64 KiB GSO
// frame (34 frames of 2048 bytes, 17 pages): with it, GSO stays on and TCP
// crosses VPP in large frames, for 10.6 MiB of rx ring per interface.
const GSOBlock = 34 * 2048

// DefaultRings are the ring sizes used where Options.Rings leaves a field
// zero.
func DefaultRings() Rings {
	return Rings{AFPacketRxBlock: 8192, AFPacketTxFrames: 128, AFXDPQueue: 256, MemifRing: 256, MemifBuffer: 2048, TapRing: 256}
}

func (r Rings) withDefaults() Rings {
	d := DefaultRings()
	for _, f := range []struct{ v, def *int }{
		{&r.AFPacketRxBlock, &d.AFPacketRxBlock}, {&r.AFPacketTxFrames, &d.AFPacketTxFrames},
		{&r.AFXDPQueue, &d.AFXDPQueue}, {&r.MemifRing, &d.MemifRing}, {&r.MemifBuffer, &d.MemifBuffer}, {&r.TapRing, &d.TapRing},
	} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return r
}

func pow2(n int) bool { return n > 0 && bits.OnesCount(uint(n)) == 1 }

// Validate checks r (zero fields take their defaults).
func (r Rings) Validate() error {
	r = r.withDefaults()
	switch {
	case r.AFPacketRxBlock < 4096 || r.AFPacketRxBlock%4096 != 0 || r.AFPacketRxBlock > 1<<22:
		return fmt.Errorf("af_packet rx block %d: want a multiple of 4096 up to 4 MiB", r.AFPacketRxBlock)
	case r.AFPacketTxFrames < 8 || r.AFPacketTxFrames > 4096:
		return fmt.Errorf("af_packet tx frames %d: want 8 to 4096", r.AFPacketTxFrames)
	case !pow2(r.AFXDPQueue) || r.AFXDPQueue < 256 || r.AFXDPQueue > 32768:
		return fmt.Errorf("AF_XDP queue %d: want a power of two from 256 to 32768", r.AFXDPQueue)
	case !pow2(r.MemifRing) || r.MemifRing < 16 || r.MemifRing > 32768:
		return fmt.Errorf("memif ring %d: want a power of two from 16 to 32768", r.MemifRing)
	case r.MemifBuffer < 128 || r.MemifBuffer > 65535:
		return fmt.Errorf("memif buffer %d: want 128 to 65535", r.MemifBuffer)
	case !pow2(r.TapRing) || r.TapRing < 16 || r.TapRing > 32768:
		return fmt.Errorf("tap ring %d: want a power of two from 16 to 32768", r.TapRing)
	}
	return nil
}

// afPacketGeometry is an af_packet interface's rings for frames of up to
// mtu bytes (0: 1500).
type afPacketGeometry struct {
	rxFrame, rxPerBlock, txFrame, txFrames uint32
}

// gso reports whether the rings carry GSO frames.
func (g afPacketGeometry) gso() bool { return g.rxFrame*g.rxPerBlock >= GSOBlock }

// frameRoom is what an af_packet frame needs besides the L2 frame: the
// tpacket3 header, sockaddr_ll, the virtio-net header and alignment.
const frameRoom = 256

func (r Rings) afPacket(mtu uint32) afPacketGeometry {
	r = r.withDefaults()
	if mtu == 0 {
		mtu = 1500
	}
	need := (mtu + 14 + 4 + frameRoom + 4095) &^ 4095 // one frame, whole pages
	block := max(uint32(r.AFPacketRxBlock), need)
	g := afPacketGeometry{rxFrame: 2048, rxPerBlock: block / 2048, txFrames: uint32(r.AFPacketTxFrames)}
	g.txFrame = max(2048, (mtu+14+4+frameRoom+63)&^63)
	if g.gso() {
		g.txFrame, g.txFrames = 2048*33, 16
	}
	return g
}

// uplinkGeometry is the uplink's: GSO-sized, as VPP's defaults are, since
// every tunnel of the node crosses it.
var uplinkGeometry = afPacketGeometry{rxFrame: 2048, rxPerBlock: 34, txFrame: 2048 * 33, txFrames: 16}

// request is the create request. With GSO rings VPP reads and writes the
// virtio-net header (CKSUM_GSO): the host's frames may be GSO super-frames
// with checksums left for offload, and VPP may send such frames back.
// Without, the workload sends finished frames no larger than the MTU, and
// VPP, seeing an interface without GSO, segments in software what it
// would send larger.
func (g afPacketGeometry) request(hostIf string) *af_packet.AfPacketCreateV3 {
	var flags af_packet.AfPacketFlags
	if g.gso() {
		flags = af_packet.AF_PACKET_API_FLAG_CKSUM_GSO
	}
	return &af_packet.AfPacketCreateV3{
		Mode:             af_packet.AF_PACKET_API_MODE_ETHERNET,
		HostIfName:       hostIf,
		RxFrameSize:      g.rxFrame,
		TxFrameSize:      g.txFrame,
		RxFramesPerBlock: g.rxPerBlock,
		TxFramesPerBlock: g.txFrames,
		NumRxQueues:      1,
		NumTxQueues:      1,
		Flags:            flags,
	}
}
