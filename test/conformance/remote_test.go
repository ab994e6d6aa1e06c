package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"go.fd.io/govpp/binapi/vlib"

	"github.com/nsmfwd/nsmfwd/ebpf/kernel"
	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/internal/wgnl"
	"github.com/nsmfwd/nsmfwd/vppapi"
)

// remoteNode is one "node" of a cross-node test: a namespace with a
// dataplane that has 192.0.2.x on its uplink up0.
type remoteNode struct {
	name, path string
	dp         forwarder.Dataplane
	offer      forwarder.Offerer
}

// TestVXLANKernelAndVPP: the kernel dataplane on one node and the VPP
// dataplane on the other build the two halves of one VXLAN vWire, in both
// directions (each serving the other's Request): the two speak the same
// NSM parameters and the same VXLAN on the wire.
func TestVXLANKernelAndVPP(t *testing.T) {
	testKernelAndVPP(t, forwarder.MechanismVXLAN, forwarder.PayloadEthernet)
}

// TestWireGuardKernelAndVPP: the same with WireGuard (IP payload), on a
// kernel that has WireGuard (the guest-VM tier's, with VPP_BIN set): the
// kernel dataplane's key exchange and ports are VPP's.
func TestWireGuardKernelAndVPP(t *testing.T) {
	testKernelAndVPP(t, forwarder.MechanismWireGuard, forwarder.PayloadIP)
}

func testKernelAndVPP(t *testing.T, mech string, payload forwarder.Payload) {
	bin := vppBin(t)
	for _, kernelServes := range []bool{false, true} {
		name := "vpp-serves"
		if kernelServes {
			name = "kernel-serves"
		}
		t.Run(name, func(t *testing.T) {
			kName, kPath := nstest.New(t)
			vName, vPath := nstest.New(t)
			if out, err := nstest.Exec(t, kName, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0", "netns", vName); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			// A veth hands its peer checksums left for offload, which a
			// NIC would have filled in. VPP's vxlan decap keeps such an
			// outer header's offload flags on the inner frame, which the
			// kernel then refuses, so the kernel node's uplink computes its
			// checksums, as a NIC does.
			if _, err := exec.LookPath("ethtool"); err != nil {
				t.Skip("ethtool is needed to turn off the veth uplink's checksum offload (apt-get install ethtool)")
			}
			if out, err := nstest.Exec(t, kName, "ethtool", "-K", "up0", "tx", "off"); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, x := range []struct{ ns, ip string }{{kName, "192.0.2.1/24"}, {vName, "192.0.2.2/24"}} {
				for _, args := range [][]string{{"ip", "addr", "add", x.ip, "dev", "up0"}, {"ip", "link", "set", "up0", "up"}, {"ip", "link", "set", "lo", "up"}} {
					if out, err := nstest.Exec(t, x.ns, args...); err != nil {
						t.Fatalf("%v: %v\n%s", args, err, out)
					}
				}
			}
			var b [4]byte
			_, _ = rand.Read(b[:])
			suffix := hex.EncodeToString(b[:])
			pinDir := "/sys/fs/bpf/nsmfwd-conf-" + suffix
			t.Cleanup(func() { _ = os.RemoveAll(pinDir) })
			kd, err := kernel.New(context.Background(), kernel.Options{Name: "k-" + suffix, HostNetNS: kPath, PinDir: pinDir, TunnelIP: netip.MustParseAddr("192.0.2.1")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = kd.Close() })

			dir, err := os.MkdirTemp("", "vpp")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p, err := vppapi.StartProcess(ctx, vppapi.ProcessOptions{Bin: bin, RuntimeDir: dir, NetNS: vPath, MainCore: -1})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				p.Stop()
				if t.Failed() {
					out, _ := os.ReadFile(dir + "/vpp.out")
					t.Logf("VPP output:\n%s", tail(out, 3000))
				}
				_ = os.RemoveAll(dir)
			})
			vc, err := vppapi.Dial(ctx, vppapi.ConnOptions{Socket: p.APISocket(), Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(vc.Close)
			if _, err := vppapi.AttachUplink(ctx, vc, vppapi.UplinkOptions{Name: "v-" + suffix, Mode: vppapi.UplinkAFPacket, Interface: "up0", HostNetNS: vPath}); err != nil {
				t.Fatal(err)
			}
			vd, err := vppapi.New(ctx, vppapi.Options{Name: "v-" + suffix, Conn: vc, HostNetNS: vPath, TunnelIP: netip.MustParseAddr("192.0.2.2")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = vd.Close() })
			for _, o := range []forwarder.Dataplane{kd, vd} {
				if !slices.Contains(o.Mechanisms(forwarder.SideEndpoint), mech) {
					t.Skipf("the %s dataplane does not build %s here (kernel WireGuard: the guest-VM tier has it)", o.Name(), mech)
				}
			}

			// The client sits on the requesting node, the endpoint on the
			// serving one.
			requester, server := remoteNode{kName, kPath, kd, kd}, remoteNode{vName, vPath, vd, vd}
			if kernelServes {
				requester, server = server, requester
			}
			cName, cPath := nstest.New(t)
			_, ePath := nstest.New(t)
			base := &forwarder.Conn{ID: "mixed-1", Payload: payload,
				Client: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
					forwarder.ParamNetNSURL: "file://" + cPath, forwarder.ParamIfName: "nsm0"}},
					IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.74.0.1/24")}}},
				Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Type: forwarder.MechanismKernel, Params: map[string]string{
					forwarder.ParamNetNSURL: "file://" + ePath, forwarder.ParamIfName: "nsm0"}},
					IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.74.0.2/24")}}},
			}
			cs := base.Clone()
			cs.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsRemote, Type: mech, Params: offerOf(requester.offer, mech, payload)}
			if err := server.dp.Connect(ctx, cs); err != nil {
				t.Fatalf("serving node: %v", err)
			}
			cr := base.Clone()
			cr.Endpoint.Mechanism = cs.Client.Mechanism
			cr.MTU = cs.MTU
			if err := requester.dp.Connect(ctx, cr); err != nil {
				t.Fatalf("requesting node: %v", err)
			}
			var out string
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
				if out, err = nstest.Exec(t, cName, "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.74.0.2"); err == nil {
					break
				}
			}
			if err != nil {
				t.Logf("VPP errors:\n%s", vcli(vc, "show errors"))
				if mech == forwarder.MechanismWireGuard {
					t.Logf("VPP WireGuard:\n%s\n%s\nkernel WireGuard: %s", vcli(vc, "show wireguard interface"), vcli(vc, "show wireguard peer"), kernelWG(t, kPath))
				}
				t.Fatalf("ping across the mixed tunnel: %v\n%s", err, out)
			}
			for _, n := range []remoteNode{requester, server} {
				if err := n.dp.Disconnect(ctx, "mixed-1"); err != nil {
					t.Fatal(err)
				}
				if got := nstest.Links(t, n.path); !slices.Equal(got, []string{"lo", "up0"}) {
					t.Errorf("links left on %s: %v", n.name, got)
				}
			}
		})
	}
}

// kernelWG describes the WireGuard devices in the namespace at path.
func kernelWG(t *testing.T, path string) string {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err.Error()
	}
	defer ns.Close()
	c, err := wgnl.Open(ns)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err.Error()
	}
	defer h.Close()
	links, _ := h.LinkList()
	var b strings.Builder
	for _, l := range links {
		if l.Type() != "wireguard" {
			continue
		}
		d, err := c.Device(l.Attrs().Index)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", l.Attrs().Name, err)
			continue
		}
		fmt.Fprintf(&b, "%s: public %s port %d\n", d.Name, d.PublicKey, d.ListenPort)
		for _, p := range d.Peers {
			fmt.Fprintf(&b, "  peer %s endpoint %s handshake %v rx %d tx %d allowed %v\n", p.PublicKey, p.Endpoint, p.LastHandshake, p.RxBytes, p.TxBytes, p.AllowedIPs)
		}
	}
	t.Helper()
	return b.String()
}

func vcli(vc *vppapi.Conn, cmd string) string {
	var rep vlib.CliInbandReply
	if err := vc.Invoke(context.Background(), &vlib.CliInband{Cmd: cmd}, &rep); err != nil {
		return err.Error()
	}
	return rep.Reply
}

func offerOf(o forwarder.Offerer, typ string, payload forwarder.Payload) map[string]string {
	p, _ := o.Offer(typ, payload)
	return p
}
