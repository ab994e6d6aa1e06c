package vppapi

import "testing"

// Interface kinds come from nsmfwd's own creates and from VPP's dumps,
// which spell them differently; deleteIf and the pinholes rely on both
// giving the same kind.
func TestIfaceKind(t *testing.T) {
	for dev, want := range map[string]string{
		"AF_XDP interface": "af_xdp", "af_xdp": "af_xdp",
		"af_packet": "af_packet", "af-packet": "af_packet",
		"Wireguard Tunnel": "wireguard", "wireguard": "wireguard",
		"VXLAN": "vxlan", "vxlan": "vxlan", "virtio": "virtio", "memif": "memif",
	} {
		if got := (vppIf{devType: dev}).kind(); got != want {
			t.Errorf("%q: %q, want %q", dev, got, want)
		}
	}
}

func TestAbstractName(t *testing.T) {
	for in, want := range map[string]string{
		"abstract:nsmfwd-ab-cd-c,netns_name=/proc/1/fd/7": "nsmfwd-ab-cd-c",
		"abstract:x": "x", "/run/nsmfwd/memif/x/memif.sock": "", "": "",
	} {
		if got := abstractName(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
