package wgnl

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// unhex reads bytes written as hex with spaces, line breaks and "//"
// comments.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for line := range strings.SplitSeq(s, "\n") {
		line, _, _ = strings.Cut(line, "//")
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func littleEndian(t *testing.T) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the golden bytes are those of a little-endian host")
	}
}

func seq(start byte) Key {
	var k Key
	for i := range k {
		k[i] = start + byte(i)
	}
	return k
}

func fill(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

// The bytes below are written from include/uapi/linux/wireguard.h and
// include/uapi/linux/netlink.h: struct nlattr {u16 nla_len; u16 nla_type},
// values padded to 4 bytes, NLA_F_NESTED (0x8000) on nested attributes,
// integers in host order except the port inside struct sockaddr.
func TestSetDeviceGolden(t *testing.T) {
	littleEndian(t)
	priv := seq(0x01)
	port := uint16(51820)
	keepalive := uint16(10)
	attrs, err := setAttrs(7, Config{
		PrivateKey:   &priv,
		ListenPort:   &port,
		ReplacePeers: true,
		Peers: []PeerConfig{{
			PublicKey:                   fill(0xbb),
			ReplaceAllowedIPs:           true,
			Endpoint:                    netip.MustParseAddrPort("192.0.2.2:51821"),
			PersistentKeepaliveInterval: &keepalive,
			AllowedIPs:                  []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `
		01 01 00 00                      // genlmsghdr: WG_CMD_SET_DEVICE, version 1
		08 00 01 00  07 00 00 00         // WGDEVICE_A_IFINDEX 7
		24 00 03 00                      // WGDEVICE_A_PRIVATE_KEY, 32 bytes
		  0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
		06 00 06 00  6c ca 00 00         // WGDEVICE_A_LISTEN_PORT 51820, padded
		08 00 05 00  01 00 00 00         // WGDEVICE_A_FLAGS WGDEVICE_F_REPLACE_PEERS
		98 00 08 80                      // WGDEVICE_A_PEERS (nested), 152 bytes
		  94 00 00 80                    //   peer 0 (nested), 148 bytes
		    24 00 01 00                  //     WGPEER_A_PUBLIC_KEY
		      bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
		    08 00 03 00  02 00 00 00     //     WGPEER_A_FLAGS WGPEER_F_REPLACE_ALLOWEDIPS
		    14 00 04 00                  //     WGPEER_A_ENDPOINT: struct sockaddr_in
		      02 00  ca 6d  c0 00 02 02  //       AF_INET, port 51821 (network order), 192.0.2.2
		      00 00 00 00 00 00 00 00    //       sin_zero
		    06 00 05 00  0a 00 00 00     //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL 10, padded
		    48 00 09 80                  //     WGPEER_A_ALLOWEDIPS (nested), 72 bytes
		      1c 00 00 80                //       allowed IP 0 (nested), 28 bytes
		        06 00 01 00  02 00 00 00 //         WGALLOWEDIP_A_FAMILY AF_INET
		        08 00 02 00  00 00 00 00 //         WGALLOWEDIP_A_IPADDR 0.0.0.0
		        05 00 03 00  00 00 00 00 //         WGALLOWEDIP_A_CIDR_MASK 0, padded
		      28 00 00 80                //       allowed IP 1 (nested), 40 bytes
		        06 00 01 00  0a 00 00 00 //         WGALLOWEDIP_A_FAMILY AF_INET6
		        14 00 02 00              //         WGALLOWEDIP_A_IPADDR ::
		          00000000000000000000000000000000
		        05 00 03 00  00 00 00 00 //         WGALLOWEDIP_A_CIDR_MASK 0
	`)
	if got := body(cmdSetDevice, attrs); !bytes.Equal(got, want) {
		t.Fatalf("WG_CMD_SET_DEVICE:\n got %x\nwant %x", got, want)
	}
}

func TestSetDeviceGoldenIPv6AndRemove(t *testing.T) {
	littleEndian(t)
	attrs, err := setAttrs(0x0102, Config{Peers: []PeerConfig{
		{PublicKey: fill(0x11), Remove: true},
		{PublicKey: fill(0x22), UpdateOnly: true, Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51820"),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8")}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `
		01 01 00 00
		08 00 01 00  02 01 00 00         // WGDEVICE_A_IFINDEX 0x102
		a4 00 08 80                      // WGDEVICE_A_PEERS, 164 bytes
		  30 00 00 80                    //   peer 0, 48 bytes
		    24 00 01 00  1111111111111111111111111111111111111111111111111111111111111111
		    08 00 03 00  01 00 00 00     //     WGPEER_F_REMOVE_ME
		  70 00 00 80                    //   peer 1, 112 bytes
		    24 00 01 00  2222222222222222222222222222222222222222222222222222222222222222
		    08 00 03 00  04 00 00 00     //     WGPEER_F_UPDATE_ONLY
		    20 00 04 00                  //     WGPEER_A_ENDPOINT: struct sockaddr_in6, 28 bytes
		      0a 00  ca 6c  00 00 00 00  //       AF_INET6, port 51820, sin6_flowinfo
		      20010db8000000000000000000000002
		      00 00 00 00                //       sin6_scope_id
		    20 00 09 80                  //     WGPEER_A_ALLOWEDIPS, 32 bytes
		      1c 00 00 80
		        06 00 01 00  02 00 00 00
		        08 00 02 00  0a 00 00 00 //         10.0.0.0 (masked)
		        05 00 03 00  08 00 00 00 //         /8
	`)
	if got := body(cmdSetDevice, attrs); !bytes.Equal(got, want) {
		t.Fatalf("WG_CMD_SET_DEVICE:\n got %x\nwant %x", got, want)
	}
}

func TestGetDeviceGolden(t *testing.T) {
	littleEndian(t)
	want := unhex(t, `00 01 00 00  08 00 01 00  2a 00 00 00`) // WG_CMD_GET_DEVICE, ifindex 42
	if got := body(cmdGetDevice, getAttrs(42)); !bytes.Equal(got, want) {
		t.Fatalf("WG_CMD_GET_DEVICE: got %x, want %x", got, want)
	}
}

// TestParseDeviceGolden decodes a dump as the kernel writes it, split over
// two messages: the second repeats the peer's public key with the rest of
// its allowed IPs.
func TestParseDeviceGolden(t *testing.T) {
	littleEndian(t)
	first := unhex(t, `
		00 01 00 00                      // genlmsghdr
		08 00 01 00  05 00 00 00         // WGDEVICE_A_IFINDEX 5
		08 00 02 00  77 67 30 00         // WGDEVICE_A_IFNAME "wg0"
		24 00 03 00  0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20
		24 00 04 00  bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
		06 00 06 00  6d ca 00 00         // WGDEVICE_A_LISTEN_PORT 51821
		08 00 07 00  00 00 00 00         // WGDEVICE_A_FWMARK 0
		cc 00 08 80                      // WGDEVICE_A_PEERS, 204 bytes
		  c8 00 00 80                    //   peer 0, 200 bytes
		    24 00 01 00  cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
		    24 00 02 00  0000000000000000000000000000000000000000000000000000000000000000
		    14 00 06 00                  //     WGPEER_A_LAST_HANDSHAKE_TIME
		      00 f1 53 65 00 00 00 00    //       tv_sec 1700000000
		      05 00 00 00 00 00 00 00    //       tv_nsec 5
		    0c 00 07 00  e8 03 00 00 00 00 00 00 // WGPEER_A_RX_BYTES 1000
		    0c 00 08 00  d0 07 00 00 00 00 00 00 // WGPEER_A_TX_BYTES 2000
		    06 00 05 00  19 00 00 00     //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL 25
		    20 00 04 00  0a 00 ca 6c 00 00 00 00 20010db8000000000000000000000002 00 00 00 00
		    08 00 0a 00  01 00 00 00     //     WGPEER_A_PROTOCOL_VERSION 1
		    20 00 09 80                  //     WGPEER_A_ALLOWEDIPS
		      1c 00 00 80
		        06 00 01 00  02 00 00 00
		        08 00 02 00  0a 00 00 00
		        05 00 03 00  08 00 00 00 //         10.0.0.0/8
	`)
	second := unhex(t, `
		00 01 00 00
		08 00 02 00  77 67 30 00         // WGDEVICE_A_IFNAME "wg0"
		58 00 08 80                      // WGDEVICE_A_PEERS, 88 bytes
		  54 00 00 80                    //   peer 0 again, 84 bytes
		    24 00 01 00  cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc
		    2c 00 09 80                  //     WGPEER_A_ALLOWEDIPS, 44 bytes
		      28 00 00 80
		        06 00 01 00  0a 00 00 00
		        14 00 02 00  fd000000000000000000000000000000
		        05 00 03 00  08 00 00 00 //         fd00::/8
	`)
	d, err := parseDevice([][]byte{first, second})
	if err != nil {
		t.Fatal(err)
	}
	if d.Ifindex != 5 || d.Name != "wg0" || d.PrivateKey != seq(1) || d.PublicKey != fill(0xbb) || d.ListenPort != 51821 {
		t.Fatalf("device %+v", d)
	}
	if len(d.Peers) != 1 {
		t.Fatalf("%d peers, want 1 (coalesced)", len(d.Peers))
	}
	p := d.Peers[0]
	wantIPs := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	if p.PublicKey != fill(0xcc) || p.RxBytes != 1000 || p.TxBytes != 2000 || p.PersistentKeepaliveInterval != 25 ||
		p.ProtocolVersion != 1 || p.Endpoint != netip.MustParseAddrPort("[2001:db8::2]:51820") ||
		!p.LastHandshake.Equal(time.Unix(1700000000, 5)) || !slices.Equal(p.AllowedIPs, wantIPs) {
		t.Fatalf("peer %+v", p)
	}
}

func TestSockaddrRoundTrip(t *testing.T) {
	for _, s := range []string{"192.0.2.1:1", "[2001:db8::1]:65535", "[::ffff:192.0.2.9]:51820"} {
		ap := netip.MustParseAddrPort(s)
		got, err := parseSockaddr(sockaddr(ap))
		want := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if err != nil || got != want {
			t.Errorf("%s: %v, %v", s, got, err)
		}
	}
	if _, err := parseSockaddr([]byte{2, 0, 1}); err == nil {
		t.Error("short sockaddr accepted")
	}
}

// RFC 7748, section 6.1: Alice's key pair.
func TestPublicKey(t *testing.T) {
	var priv Key
	copy(priv[:], unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	if pub := priv.PublicKey(); hex.EncodeToString(pub[:]) != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Fatalf("public key %x", pub)
	}
	k, err := GenerateKey()
	if err != nil || k.IsZero() {
		t.Fatal(k, err)
	}
	back, err := ParseKey(k.String())
	if err != nil || back != k {
		t.Fatalf("ParseKey(String()) = %v, %v", back, err)
	}
	for _, bad := range []string{"", "AAAA", strings.Repeat("A", 44) + "=", "!" + k.String()[1:]} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) accepted", bad)
		}
	}
}

// TestOpen runs against the running kernel: a kernel without WireGuard is
// ErrNotSupported (and errors.ErrUnsupported), not another error.
func TestOpen(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root (generic netlink family lookup may load a module)")
	}
	c, err := Open(netns.None())
	if errors.Is(err, ErrNotSupported) {
		if !errors.Is(err, errors.ErrUnsupported) {
			t.Fatal("ErrNotSupported does not match errors.ErrUnsupported")
		}
		t.Logf("kernel has no WireGuard: %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// lo is not a WireGuard device.
	if _, err := c.Device(1); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("Device(lo): %v, want EOPNOTSUPP", err)
	}
}
