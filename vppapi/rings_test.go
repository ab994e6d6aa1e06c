package vppapi

import "testing"

func TestRingsValidate(t *testing.T) {
	if err := (Rings{}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, bad := range []Rings{
		{AFPacketRxBlock: 5000}, {AFPacketRxBlock: 1 << 23}, {AFPacketTxFrames: 4}, {AFXDPQueue: 300},
		{AFXDPQueue: 128}, {MemifRing: 100}, {MemifBuffer: 64}, {TapRing: 3},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

func TestAFPacketGeometry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		r         Rings
		mtu       uint32
		block     uint32
		txFrame   uint32
		txFrames  uint32
		gso       bool
		gsoHeader bool
	}{
		{"default", Rings{}, 1500, 8192, 2048, 128, false, false},
		{"jumbo raises the block", Rings{}, 9000, 12288, 9280, 128, false, false},
		{"GSO block", Rings{AFPacketRxBlock: GSOBlock + 2048}, 1500, GSOBlock + 2048, 2048 * 33, 16, true, true},
		{"below GSO", Rings{AFPacketRxBlock: 65536, AFPacketTxFrames: 64}, 0, 65536, 2048, 64, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := tc.r.afPacket(tc.mtu)
			if got := g.rxFrame * g.rxPerBlock; got != tc.block || g.txFrame != tc.txFrame || g.txFrames != tc.txFrames || g.gso() != tc.gso {
				t.Fatalf("%+v: block %d, gso %v; want block %d, tx %d×%d, gso %v", g, got, g.gso(), tc.block, tc.txFrames, tc.txFrame, tc.gso)
			}
			if req := g.request("x"); (req.Flags != 0) != tc.gsoHeader {
				t.Fatalf("flags %v: want the virtio-net header only with GSO", req.Flags)
			}
		})
	}
}
