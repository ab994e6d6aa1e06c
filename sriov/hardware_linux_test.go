//go:build sriov_hw

package sriov_test

// Tests against a real SR-IOV NIC, with no stand-in: the real /sys,
// sriovnet unmodified, NetlinkPF, real driver binding and a real cgroup v2
// hierarchy. They run only with the build tag, as root, with
//
//	NSMFWD_SRIOV_PF         the PF netdev; its VFs enabled by the operator
//	                        (the tests never change sriov_numvfs)
//	NSMFWD_SRIOV_VFS        how many of its VFs, from index 0, the tests
//	                        may take over (each test puts them back);
//	                        without it only discovery runs
//	NSMFWD_SRIOV_PF_NOVFS   optional: an SR-IOV PF with sriov_numvfs 0
//	NSMFWD_SRIOV_NOT_SRIOV  optional: a netdev of a PCI NIC without SR-IOV
//
//	NSMFWD_SRIOV_PF=ens1f0 NSMFWD_SRIOV_VFS=4 go test -tags sriov_hw -run Hardware ./sriov/
//
// The guest-VM tier (test/vm) runs them on QEMU's igb with 7 VFs.
// NSMFWD_TEST_LOG=1 shows the dataplane's debug logs.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/k8snetworkplumbingwg/sriovnet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
)

const (
	hwName  = "hwtest"  // the dataplane's name: it scopes the link aliases
	hwToken = "hw/test" // the only pool of the test configs
	hwVLANs = "3900-3909"
)

// hwEnv is the real PF the tests use.
type hwEnv struct {
	pfName string
	pfPCI  string
	pf     *sriov.PF
	n      int // VFs 0..n-1 may be taken over (NSMFWD_SRIOV_VFS)
	link   *sriov.NetlinkPF
	host   *netlink.Handle
	sys    sriov.Sysfs
}

// hardwarePF reads the PF named by NSMFWD_SRIOV_PF, or skips.
func hardwarePF(t *testing.T) *hwEnv {
	t.Helper()
	name := os.Getenv("NSMFWD_SRIOV_PF")
	if name == "" {
		t.Skip("set NSMFWD_SRIOV_PF to the netdev of an SR-IOV PF with VFs enabled (the guest-VM tier, test/vm, does)")
	}
	nstest.RequireRoot(t)
	e := &hwEnv{pfName: name, link: &sriov.NetlinkPF{}}
	var err error
	if e.pfPCI, err = e.sys.PCIOfNetdev(name); err != nil {
		t.Fatal(err)
	}
	if e.pf, err = e.sys.ReadPF(e.pfPCI); err != nil {
		t.Fatal(err)
	}
	if e.host, err = netlink.NewHandle(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.host.Close)
	if v := os.Getenv("NSMFWD_SRIOV_VFS"); v != "" {
		if e.n, err = strconv.Atoi(v); err != nil || e.n < 0 || e.n > len(e.pf.VFs) {
			t.Fatalf("NSMFWD_SRIOV_VFS=%q: want 0..%d (the PF's VFs)", v, len(e.pf.VFs))
		}
	}
	return e
}

// requireVFs skips unless the tests may take over VFs 0..k-1, and fails
// unless those are kernel VFs with one netdev each.
func (e *hwEnv) requireVFs(t *testing.T, k int) {
	t.Helper()
	if e.n < k {
		t.Skipf("needs %d VFs: set NSMFWD_SRIOV_VFS to how many VFs of %s (from index 0) the tests may take over (now %d)", k, e.pfName, e.n)
	}
	for _, vf := range e.pf.VFs[:k] {
		if vf.Driver == "" || vf.Driver == sriov.DriverVFIO || len(vf.Netdevs) != 1 {
			t.Fatalf("VF %d (%s): driver %q netdevs %v: the tests want kernel VFs with one netdev each", vf.Index, vf.PCI, vf.Driver, vf.Netdevs)
		}
	}
}

func (e *hwEnv) vfDriver() string { return e.pf.VFs[0].Driver }

// indexOf returns the VF index of a VF's PCI address, -1 when it is not
// one of the PF's.
func (e *hwEnv) indexOf(pci string) int {
	for _, vf := range e.pf.VFs {
		if vf.PCI == pci {
			return vf.Index
		}
	}
	return -1
}

// config is a test config: the PF by netdev name (or PCI address), one
// pool (hwToken), per-connection VLANs and the given ranges.
func (e *hwEnv) config(byPCI bool, ranges ...sriov.VFRange) *sriov.Config {
	pf := sriov.PFConfig{PFDriver: e.pf.Driver, ServiceDomains: []string{"hw"}, Capabilities: []string{"test"}, VLANs: hwVLANs, VFs: ranges}
	if byPCI {
		pf.PCIAddress = e.pfPCI
	} else {
		pf.Name = e.pfName
	}
	return &sriov.Config{Version: 1, PhysicalFunctions: []sriov.PFConfig{pf}}
}

func (e *hwEnv) kernelRange(r string) sriov.VFRange {
	return sriov.VFRange{Range: r, Use: sriov.UseKernel, Driver: e.vfDriver()}
}

func hwLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NSMFWD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// dataplane starts a dataplane on cfg and state. Whatever the test leaves
// recorded in state is restored when it ends, by a dataplane of its own
// (the test's may be closed, as in a crash), so a failing test does not
// leave VFs behind for the next one.
func (e *hwEnv) dataplane(t *testing.T, cfg *sriov.Config, state string, pf sriov.PFLink) *sriov.Dataplane {
	t.Helper()
	opts := sriov.Options{Name: hwName, Config: cfg, StateDir: state, PFLink: pf, Logger: hwLogger(t)}
	dp, err := sriov.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dp.Close()
		if hwRecords(t, state) == nil {
			return
		}
		opts.PFLink = nil
		last, err := sriov.New(context.Background(), opts)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer last.Close()
		if _, err := last.Reconcile(context.Background(), nil); err != nil {
			t.Errorf("cleanup: restore what the test left: %v", err)
		}
	})
	return dp
}

// hwVF is what the tests compare of a VF: its settings at the PF, its
// driver binding and its netdev in the host namespace.
type hwVF struct {
	PF       sriov.VFSettings
	Driver   string
	Override string
	Netdev   string
	MAC      string
	MTU      int
	Up       bool
	Alias    string
}

func (s hwVF) String() string {
	return fmt.Sprintf("{%v driver=%q override=%q netdev=%q mac=%s mtu=%d up=%v alias=%q}",
		s.PF, s.Driver, s.Override, s.Netdev, s.MAC, s.MTU, s.Up, s.Alias)
}

func (e *hwEnv) readVF(i int) (hwVF, error) {
	pci := e.pf.VFs[i].PCI
	var s hwVF
	var err error
	if s.PF, err = e.link.VF(context.Background(), e.pfName, i); err != nil {
		return s, err
	}
	if s.Driver, err = e.sys.Driver(pci); err != nil {
		return s, err
	}
	if s.Override, err = e.sys.DriverOverride(pci); err != nil {
		return s, err
	}
	names, err := e.sys.Netdevs(pci)
	if err != nil || len(names) == 0 {
		return s, err
	}
	l, err := e.host.LinkByName(names[0])
	if err != nil {
		return s, fmt.Errorf("VF %d netdev %s: %w", i, names[0], err)
	}
	a := l.Attrs()
	s.Netdev, s.MAC, s.MTU, s.Up, s.Alias = a.Name, a.HardwareAddr.String(), a.MTU, a.RawFlags&unix.IFF_UP != 0, a.Alias
	return s, nil
}

func (e *hwEnv) mustVF(t testing.TB, i int) hwVF {
	t.Helper()
	s, err := e.readVF(i)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// requireAsBefore fails unless each VF i of want is as want[i].
func (e *hwEnv) requireAsBefore(t testing.TB, what string, want map[int]hwVF) {
	t.Helper()
	for i, w := range want {
		if got := e.mustVF(t, i); got != w {
			t.Errorf("%s: VF %d is\n  %v\nwas\n  %v", what, i, got, w)
		}
	}
}

// guard snapshots every VF the tests may use and, when the test ends,
// after its own cleanups, fails it for any VF not back as it was, and puts
// that VF back as well as it can so the next test starts clean.
func (e *hwEnv) guard(t *testing.T) {
	t.Helper()
	before := make([]hwVF, e.n)
	for i := range before {
		before[i] = e.mustVF(t, i)
	}
	t.Cleanup(func() {
		for i, b := range before {
			now, err := e.readVF(i)
			if err == nil && now == b {
				continue
			}
			t.Errorf("VF %d leaked: it is\n  %v (%v)\nwas\n  %v", i, now, err, b)
			if err := e.repair(i, b); err != nil {
				t.Logf("VF %d: repair: %v", i, err)
			}
		}
	})
}

// repair puts VF i back to s: driver, PF settings, netdev.
func (e *hwEnv) repair(i int, s hwVF) error {
	pci := e.pf.VFs[i].PCI
	var errs []error
	if drv, _ := e.sys.Driver(pci); drv != s.Driver {
		errs = append(errs, e.sys.SetDriverOverride(pci, s.Override), e.sys.Unbind(pci), e.sys.Probe(pci))
	}
	if err := e.link.SetVF(context.Background(), e.pfName, i, s.PF); !errors.As(err, new(*sriov.UnsupportedError)) {
		errs = append(errs, err)
	}
	if names, err := e.sys.Netdevs(pci); err == nil && len(names) == 1 && s.Netdev != "" {
		l, err := e.host.LinkByName(names[0])
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		errs = append(errs, e.host.LinkSetDown(l))
		if names[0] != s.Netdev {
			errs = append(errs, e.host.LinkSetName(l, s.Netdev))
		}
		if mac := l.Attrs().HardwareAddr.String(); mac != s.MAC {
			if hw, err := net.ParseMAC(s.MAC); err == nil {
				errs = append(errs, e.host.LinkSetHardwareAddr(l, hw))
			}
		}
		errs = append(errs, e.host.LinkSetMTU(l, s.MTU), e.host.LinkSetAlias(l, s.Alias))
		if s.Up {
			errs = append(errs, e.host.LinkSetUp(l))
		}
	}
	return errors.Join(errs...)
}

// withOperatorSettings gives VFs non-default settings through the PF, as
// an operator would (trust on, spoof checking off, a rate limit; MAC,
// VLAN and link state as they are), and restores theirs when the test
// ends.
func (e *hwEnv) withOperatorSettings(t *testing.T, idx ...int) {
	t.Helper()
	ctx := context.Background()
	for _, i := range idx {
		pristine, err := e.link.VF(ctx, e.pfName, i)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := e.link.SetVF(ctx, e.pfName, i, pristine); err != nil {
				t.Errorf("VF %d: restore the operator's settings: %v", i, err)
			}
		})
		op := pristine
		op.Trust, op.SpoofChk, op.MaxTxRate = true, false, 100
		if err := e.link.SetVF(ctx, e.pfName, i, op); err != nil {
			t.Fatalf("VF %d: operator settings %v: %v", i, op, err)
		}
		if got, err := e.link.VF(ctx, e.pfName, i); err != nil || got != op {
			t.Fatalf("VF %d: operator settings read back as %v (%v), want %v", i, got, err, op)
		}
	}
}

// hwRecord is a VF record as the dataplane persists it.
type hwRecord struct {
	ConnID   string             `json:"conn_id"`
	Side     forwarder.SideKind `json:"side"`
	Use      string             `json:"use"`
	PF       string             `json:"pf"`
	PFNetdev string             `json:"pf_netdev"`
	Index    int                `json:"index"`
	PCI      string             `json:"pci"`
	VLAN     int                `json:"vlan"`
	MAC      string             `json:"mac"`
	NetNS    string             `json:"netns"`
	IfName   string             `json:"ifname"`
	Cgroup   string             `json:"cgroup_dir"`
	Orig     struct {
		Netdev *struct {
			Name string `json:"name"`
		} `json:"netdev"`
		Driver string `json:"driver"`
	} `json:"orig"`
}

// hwRecords reads the state directory: one record per allocated VF, in a
// file named after the VF.
func hwRecords(t testing.TB, dir string) []hwRecord {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []hwRecord
	for _, ent := range entries {
		enc, ok := strings.CutPrefix(ent.Name(), "conn-")
		if !ok || !strings.HasSuffix(enc, ".json") {
			t.Errorf("state %s: unexpected file %s", dir, ent.Name())
			continue
		}
		key, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(enc, ".json"))
		if err != nil {
			t.Fatalf("state file %s: %v", ent.Name(), err)
		}
		var r hwRecord
		if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dir, ent.Name()))), &r); err != nil {
			t.Fatalf("state file %s: %v", ent.Name(), err)
		}
		if string(key) != "vf/"+r.PCI {
			t.Errorf("state file %s (%q) holds the record of VF %s", ent.Name(), key, r.PCI)
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b hwRecord) int { return a.Index - b.Index })
	return out
}

func hwRecordOf(t testing.TB, recs []hwRecord, id string, side forwarder.SideKind) hwRecord {
	t.Helper()
	for _, r := range recs {
		if r.ConnID == id && r.Side == side {
			return r
		}
	}
	t.Fatalf("no record of %s %s in %+v", id, side, recs)
	return hwRecord{}
}

// hwConn is a KERNEL connection n between two namespaces, with the pool
// named in the client's mechanism unless the config's default is to be
// used.
func hwConn(n int, client, endpoint string, token bool) *forwarder.Conn {
	cp := map[string]string{forwarder.ParamNetNSURL: "file://" + client, forwarder.ParamIfName: fmt.Sprintf("nsm%d", n)}
	if token {
		cp[sriov.ParamSRIOVToken] = hwToken
	}
	return &forwarder.Conn{
		ID: fmt.Sprintf("hw-%d", n), Payload: forwarder.PayloadEthernet, MTU: 1400,
		Client: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Params: cp},
			IP:        forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.99.%d.1/24", n))}},
		},
		Endpoint: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Params: map[string]string{
				forwarder.ParamNetNSURL: "file://" + endpoint, forwarder.ParamIfName: fmt.Sprintf("nse%d", n)}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.99.%d.2/24", n))}},
		},
	}
}

// hwNS is a throwaway namespace: its name (for ip netns exec) and path.
type hwNS struct{ name, path string }

func newHWNS(t *testing.T) hwNS {
	name, path := nstest.New(t)
	return hwNS{name, path}
}

// requireLink checks that the namespace holds ifName on the VF pci, up,
// with the MTU and the IPv4 address given, and returns it.
func requireLink(t *testing.T, ns hwNS, ifName, pci string, mtu int, addr string) netlink.Link {
	t.Helper()
	h := handle(t, ns.path)
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatalf("%s in %s: %v (links %v)", ifName, ns.name, err, nstest.Links(t, ns.path))
	}
	a := l.Attrs()
	if a.ParentDev != pci || a.MTU != mtu || a.RawFlags&unix.IFF_UP == 0 {
		t.Errorf("%s in %s: parent %q mtu %d flags %#x, want VF %s, mtu %d, up", ifName, ns.name, a.ParentDev, a.MTU, a.RawFlags, pci, mtu)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ad := range addrs {
		got = append(got, ad.IPNet.String())
	}
	if !slices.Contains(got, addr) {
		t.Errorf("%s in %s: addresses %v, want %s", ifName, ns.name, got, addr)
	}
	return l
}

func hwPing(t *testing.T, from hwNS, to string) {
	t.Helper()
	if out, err := nstest.Exec(t, from.name, "ping", "-c", "3", "-i", "0.3", "-W", "5", to); err != nil {
		t.Fatalf("ping %s from %s: %v\n%s", to, from.name, err, out)
	}
}

// countingPF is NetlinkPF (the real one) counting the SetVF calls per VF.
type countingPF struct {
	*sriov.NetlinkPF
	mu   sync.Mutex
	sets map[int]int
}

func (c *countingPF) SetVF(ctx context.Context, pf string, vf int, s sriov.VFSettings) error {
	c.mu.Lock()
	if c.sets == nil {
		c.sets = map[int]int{}
	}
	c.sets[vf]++
	c.mu.Unlock()
	return c.NetlinkPF.SetVF(ctx, pf, vf, s)
}

func (c *countingPF) count(vf int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sets[vf]
}

// TestHardwareDiscovery reads the real PF with sriov.Sysfs and checks it
// against sriovnet and the kernel's own files and links.
func TestHardwareDiscovery(t *testing.T) {
	e := hardwarePF(t)
	pf := e.pf
	if p, err := sriovnet.GetPciFromNetDevice(e.pfName); err != nil || p != e.pfPCI {
		t.Errorf("PF %s: PCI %s, sriovnet says %s (%v)", e.pfName, e.pfPCI, p, err)
	}
	if pf.Netdev != e.pfName || pf.Driver == "" {
		t.Errorf("PF %s: netdev %q driver %q", e.pfPCI, pf.Netdev, pf.Driver)
	}
	dev := filepath.Join("/sys/bus/pci/devices", e.pfPCI)
	total, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(dev, "sriov_totalvfs"))))
	num, _ := strconv.Atoi(strings.TrimSpace(readFile(t, filepath.Join(dev, "sriov_numvfs"))))
	if pf.TotalVFs != total || pf.NumVFs != num || num == 0 || num > total || len(pf.VFs) != num {
		t.Fatalf("PF %s: sriov_totalvfs %d sriov_numvfs %d, read %d/%d with %d VFs", e.pfPCI, total, num, pf.TotalVFs, pf.NumVFs, len(pf.VFs))
	}
	if os.Getenv("NSMFWD_GUEST_VM") != "" && (num != e.n || total != 7) {
		t.Errorf("guest VM: sriov_numvfs %d sriov_totalvfs %d, want %d of QEMU igb's 7", num, total, e.n)
	}
	if !sriovnet.IsSriovSupported(e.pfName) || !sriovnet.IsSriovEnabled(e.pfName) {
		t.Errorf("sriovnet: PF %s supported %v enabled %v", e.pfName, sriovnet.IsSriovSupported(e.pfName), sriovnet.IsSriovEnabled(e.pfName))
	}
	handle, err := sriovnet.GetPfNetdevHandle(e.pfName)
	if err != nil {
		t.Fatal(err)
	}
	byIndex := map[int]*sriovnet.VfObj{}
	for _, v := range handle.List {
		byIndex[v.Index] = v
	}
	if len(byIndex) != num {
		t.Errorf("sriovnet lists %d VFs, sysfs %d", len(byIndex), num)
	}
	l, err := e.host.LinkByName(e.pfName)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Attrs().Vfs) != num {
		t.Errorf("netlink: PF %s reports %d VFs, sriov_numvfs is %d", e.pfName, len(l.Attrs().Vfs), num)
	}
	groups := map[int]string{}
	for i, vf := range pf.VFs {
		if vf.Index != i {
			t.Errorf("VF #%d has index %d: want one VF per index 0..%d", i, vf.Index, num-1)
		}
		if link, err := os.Readlink(filepath.Join(dev, fmt.Sprintf("virtfn%d", vf.Index))); err != nil || filepath.Base(link) != vf.PCI {
			t.Errorf("VF %d: PCI %s, virtfn%d -> %s (%v)", vf.Index, vf.PCI, vf.Index, link, err)
		}
		if idx, err := sriovnet.GetVfIndexByPciAddress(vf.PCI); err != nil || idx != vf.Index {
			t.Errorf("VF %s: index %d, sriovnet says %d (%v)", vf.PCI, vf.Index, idx, err)
		}
		if p, err := sriovnet.GetPfPciFromVfPci(vf.PCI); err != nil || p != e.pfPCI {
			t.Errorf("VF %s: PF %s, sriovnet says %s (%v)", vf.PCI, e.pfPCI, p, err)
		}
		if p, err := e.sys.PhysFn(vf.PCI); err != nil || p != e.pfPCI {
			t.Errorf("VF %s: Sysfs.PhysFn %s (%v), want %s", vf.PCI, p, err, e.pfPCI)
		}
		if o := byIndex[vf.Index]; o == nil || o.PciAddress != vf.PCI {
			t.Errorf("VF %d: PCI %s, sriovnet's PF handle has %+v", vf.Index, vf.PCI, o)
		}
		g, err := os.Readlink(filepath.Join("/sys/bus/pci/devices", vf.PCI, "iommu_group"))
		if err != nil || strconv.Itoa(vf.IOMMUGroup) != filepath.Base(g) {
			t.Errorf("VF %d: IOMMU group %d, iommu_group -> %s (%v)", vf.Index, vf.IOMMUGroup, g, err)
		}
		if members, err := e.sys.IOMMUGroupDevices(vf.IOMMUGroup); err != nil || !slices.Contains(members, vf.PCI) {
			t.Errorf("VF %d: IOMMU group %d has %v (%v)", vf.Index, vf.IOMMUGroup, members, err)
		}
		if prev, dup := groups[vf.IOMMUGroup]; dup && os.Getenv("NSMFWD_GUEST_VM") != "" {
			t.Errorf("guest VM: VFs %s and %s share IOMMU group %d", prev, vf.PCI, vf.IOMMUGroup)
		}
		groups[vf.IOMMUGroup] = vf.PCI
		drv, err := os.Readlink(filepath.Join("/sys/bus/pci/devices", vf.PCI, "driver"))
		if err != nil || filepath.Base(drv) != vf.Driver {
			t.Errorf("VF %d: driver %q, driver -> %s (%v)", vf.Index, vf.Driver, drv, err)
		}
		if os.Getenv("NSMFWD_GUEST_VM") != "" && vf.Driver != "igbvf" {
			t.Errorf("guest VM: VF %d bound to %q, want igbvf", vf.Index, vf.Driver)
		}
		names, err := sriovnet.GetNetDevicesFromPci(vf.PCI)
		if vf.Driver != sriov.DriverVFIO && (len(vf.Netdevs) == 0 || err != nil || !slices.Equal(names, vf.Netdevs)) {
			t.Errorf("VF %d: netdevs %v, sriovnet says %v (%v)", vf.Index, vf.Netdevs, names, err)
		}
		if len(vf.Netdevs) == 1 {
			if got := sriovnet.GetVfNetdevName(handle, byIndex[vf.Index]); got != vf.Netdevs[0] {
				t.Errorf("VF %d: netdev %s, sriovnet says %q", vf.Index, vf.Netdevs[0], got)
			}
		}
		if _, err := e.link.VF(context.Background(), e.pfName, vf.Index); err != nil {
			t.Errorf("VF %d settings: %v", vf.Index, err)
		}
		t.Logf("VF %d %s group %d driver %q netdevs %v rdma %v", vf.Index, vf.PCI, vf.IOMMUGroup, vf.Driver, vf.Netdevs, vf.RDMA)
	}
	if name := os.Getenv("NSMFWD_SRIOV_PF_NOVFS"); name != "" {
		pci, err := e.sys.PCIOfNetdev(name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := e.sys.ReadPF(pci)
		if err != nil || p.NumVFs != 0 || p.TotalVFs == 0 || len(p.VFs) != 0 {
			t.Errorf("PF %s without VFs: %+v (%v)", name, p, err)
		}
	}
	if name := os.Getenv("NSMFWD_SRIOV_NOT_SRIOV"); name != "" {
		pci, err := e.sys.PCIOfNetdev(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.sys.ReadPF(pci); err == nil || sriovnet.IsSriovSupported(name) {
			t.Errorf("NIC %s without SR-IOV read as a PF (%v), sriovnet supported %v", name, err, sriovnet.IsSriovSupported(name))
		}
	}
}

// TestHardwarePoolConfig selects the PF by netdev name (pool named by the
// client) and by PCI address (the config's default pool), connects a
// KERNEL connection and checks that the state directory says which VF is
// whose, as the namespaces show it.
func TestHardwarePoolConfig(t *testing.T) {
	e := hardwarePF(t)
	e.requireVFs(t, 2)
	for _, byPCI := range []bool{false, true} {
		name := map[bool]string{false: "ByName", true: "ByPCIAddress"}[byPCI]
		t.Run(name, func(t *testing.T) {
			e.guard(t)
			client, endpoint := newHWNS(t), newHWNS(t)
			cfg := e.config(byPCI, e.kernelRange("0-1"))
			if byPCI {
				cfg.DefaultToken = hwToken
			}
			state := filepath.Join(t.TempDir(), "state")
			dp := e.dataplane(t, cfg, state, nil)
			f := dp.Figures()
			if len(f.PFs) != 1 || f.PFs[0].PF != e.pfPCI || !slices.Equal(f.PFs[0].Counts, []sriov.VFCount{{Use: sriov.UseKernel, Free: 2}}) {
				t.Fatalf("figures before Connect: %+v", f.PFs)
			}
			ctx := context.Background()
			c := hwConn(1, client.path, endpoint.path, !byPCI)
			if err := dp.Check(ctx, c.ID, forwarder.SideClient, c.Client.Mechanism); err != nil {
				t.Fatal(err)
			}
			if err := dp.Connect(ctx, c); err != nil {
				t.Fatal(err)
			}
			recs := hwRecords(t, state)
			if len(recs) != 2 {
				t.Fatalf("%d records, want 2: %+v", len(recs), recs)
			}
			cr, er := hwRecordOf(t, recs, c.ID, forwarder.SideClient), hwRecordOf(t, recs, c.ID, forwarder.SideEndpoint)
			vlan := c.Client.Mechanism.Params[sriov.ParamVLAN]
			for _, x := range []struct {
				r      hwRecord
				ns     hwNS
				ifName string
				addr   string
			}{{cr, client, "nsm1", "10.99.1.1/24"}, {er, endpoint, "nse1", "10.99.1.2/24"}} {
				r := x.r
				if r.Use != sriov.UseKernel || r.PF != e.pfPCI || r.PFNetdev != e.pfName || r.Index != e.indexOf(r.PCI) || r.Index < 0 || r.Index > 1 ||
					strconv.Itoa(r.VLAN) != vlan || r.NetNS != "file://"+x.ns.path || r.IfName != x.ifName || r.Orig.Netdev == nil ||
					r.Orig.Netdev.Name != e.pf.VFs[r.Index].Netdevs[0] || r.Orig.Driver != e.vfDriver() {
					t.Errorf("%s record: %+v", r.Side, r)
				}
				// The record names the VF the namespace holds.
				requireLink(t, x.ns, x.ifName, r.PCI, 1400, x.addr)
			}
			if cr.PCI == er.PCI || c.Client.Mechanism.Params[sriov.ParamPCIAddress] != cr.PCI {
				t.Errorf("client VF %s (pciAddress %q), endpoint VF %s", cr.PCI, c.Client.Mechanism.Params[sriov.ParamPCIAddress], er.PCI)
			}
			if vlan == "0" || c.Endpoint.Mechanism.Params[sriov.ParamVLAN] != vlan {
				t.Errorf("vlan params %q %q", vlan, c.Endpoint.Mechanism.Params[sriov.ParamVLAN])
			}
			f = dp.Figures()
			if !slices.Equal(f.PFs[0].Counts, []sriov.VFCount{{Use: sriov.UseKernel, Allocated: 2}}) {
				t.Errorf("figures after Connect: %+v", f.PFs)
			}
			if err := dp.Disconnect(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
			if recs := hwRecords(t, state); len(recs) != 0 {
				t.Fatalf("records left after Disconnect: %+v", recs)
			}
		})
	}
}

// TestHardwareKernel gives the client and the endpoint a VF each (KERNEL)
// and checks, read back from the kernel, what a connection changes and
// that Close puts back every field, the operator's non-default settings
// included.
func TestHardwareKernel(t *testing.T) {
	e := hardwarePF(t)
	e.requireVFs(t, 2)
	e.guard(t)
	e.withOperatorSettings(t, 0, 1)
	orig := map[int]hwVF{0: e.mustVF(t, 0), 1: e.mustVF(t, 1)}
	client, endpoint := newHWNS(t), newHWNS(t)
	state := filepath.Join(t.TempDir(), "state")
	pf := &countingPF{NetlinkPF: e.link}
	dp := e.dataplane(t, e.config(false, e.kernelRange("0-1")), state, pf)
	ctx := context.Background()
	c := hwConn(1, client.path, endpoint.path, true)
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	cpci := c.Client.Mechanism.Params[sriov.ParamPCIAddress]
	ci := e.indexOf(cpci)
	if ci < 0 || ci > 1 {
		t.Fatalf("client VF %q is not VF 0 or 1", cpci)
	}
	ei := 1 - ci
	vlan, _ := strconv.Atoi(c.Client.Mechanism.Params[sriov.ParamVLAN])
	cl := requireLink(t, client, "nsm1", cpci, 1400, "10.99.1.1/24")
	el := requireLink(t, endpoint, "nse1", e.pf.VFs[ei].PCI, 1400, "10.99.1.2/24")
	for i, l := range map[int]netlink.Link{ci: cl, ei: el} {
		if _, err := e.host.LinkByName(orig[i].Netdev); err == nil {
			t.Errorf("VF %d: %s is still in the host namespace", i, orig[i].Netdev)
		}
		// The PF gives the VF the connection's MAC (the netdev's) and
		// VLAN; the operator's other settings stay.
		got, err := e.link.VF(ctx, e.pfName, i)
		want := orig[i].PF
		want.MAC, want.VLAN, want.QoS = l.Attrs().HardwareAddr.String(), vlan, 0
		if err != nil || got != want || vlan < 3900 || vlan > 3909 || got.MAC == orig[i].PF.MAC {
			t.Errorf("VF %d at the PF: %v (%v), want %v", i, got, err, want)
		}
	}
	hwPing(t, client, "10.99.1.2")
	hwPing(t, endpoint, "10.99.1.1")
	// A refresh changes nothing.
	sets := pf.count(0) + pf.count(1)
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if now := pf.count(0) + pf.count(1); now != sets {
		t.Errorf("the refresh made %d PF changes", now-sets)
	}
	if l, err := handle(t, client.path).LinkByName("nsm1"); err != nil || l.Attrs().Index != cl.Attrs().Index {
		t.Errorf("after the refresh: %v (%v), was index %d", l, err, cl.Attrs().Index)
	}
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	e.requireAsBefore(t, "after Close", orig)
	if links := nstest.Links(t, client.path); !slices.Equal(links, []string{"lo"}) {
		t.Errorf("client namespace after Close: %v", links)
	}
	if f := dp.Figures(); f.RestoreFailures != 0 {
		t.Errorf("restore failures: %d", f.RestoreFailures)
	}
	if recs := hwRecords(t, state); len(recs) != 0 {
		t.Fatalf("records left after Close: %+v", recs)
	}
}

// TestHardwareSetVFReportsUnsupported: a setting the PF's driver refuses
// (igb: the VF link state) is reported by NetlinkPF.SetVF as an
// *sriov.UnsupportedError naming it, and the other fields of the same
// call are applied, not dropped.
func TestHardwareSetVFReportsUnsupported(t *testing.T) {
	e := hardwarePF(t)
	e.requireVFs(t, 1)
	e.guard(t)
	ctx := context.Background()
	cur := e.mustVF(t, 0).PF
	t.Cleanup(func() {
		if err := e.link.SetVF(ctx, e.pfName, 0, cur); err != nil && !errors.As(err, new(*sriov.UnsupportedError)) {
			t.Errorf("VF 0: put back %v: %v", cur, err)
		}
	})
	want := cur
	want.LinkState = sriov.VFLinkStateEnable
	if cur.LinkState == sriov.VFLinkStateEnable {
		want.LinkState = sriov.VFLinkStateDisable
	}
	want.Trust, want.SpoofChk, want.MaxTxRate = !cur.Trust, !cur.SpoofChk, cur.MaxTxRate+50
	err := e.link.SetVF(ctx, e.pfName, 0, want)
	got, rerr := e.link.VF(ctx, e.pfName, 0)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		if got != want {
			t.Fatalf("SetVF(%v) succeeded, read back %v", want, got)
		}
		t.Skipf("the PF's driver takes every setting, link state included: nothing is refused here")
	}
	ue, ok := errors.AsType[*sriov.UnsupportedError](err)
	if !ok || fmt.Sprintf("%T", err) != "*sriov.UnsupportedError" || !slices.Equal(ue.Fields, []string{"link state"}) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatalf("SetVF(%v): %v (%T), want a bare *sriov.UnsupportedError naming only the link state", want, err, err)
	}
	applied := want
	applied.LinkState = cur.LinkState
	if got != applied {
		t.Fatalf("after SetVF(%v), refused %v: read back %v, want every other field applied: %v", want, ue.Fields, got, applied)
	}
	t.Logf("refused: %v", err)
}

// hwRuntimeProgram stands in for a container runtime's device program: of
// the character devices it allows only /dev/null (1:3) and /dev/zero
// (1:5).
func hwRuntimeProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "hw_runtime_dev", Type: ebpf.CGroupDevice, AttachType: ebpf.AttachCGroupDevice, License: "Apache-2.0",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.And.Imm(asm.R2, 0xffff),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.LoadMem(asm.R4, asm.R1, 8, asm.Word),
			asm.Mov.Imm(asm.R0, 1),
			asm.JNE.Imm(asm.R2, unix.BPF_DEVCG_DEV_CHAR, "out"),
			asm.JNE.Imm(asm.R3, 1, "deny"),
			asm.JEq.Imm(asm.R4, 3, "out"),
			asm.JEq.Imm(asm.R4, 5, "out"),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("deny"),
			asm.Return().WithSymbol("out"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// hwCgroup is a throwaway cgroup v2 directory with the runtime stand-in's
// device program attached.
type hwCgroup struct {
	rel, dir string
	ino      uint64
	runtime  ebpf.ProgramID
}

func newHWCgroup(t *testing.T) *hwCgroup {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(sriov.DefaultCgroupRoot, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skipf("VFIO test: needs cgroup v2 mounted at %s", sriov.DefaultCgroupRoot)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	cg := &hwCgroup{rel: "nsmfwd-hw-" + hex.EncodeToString(b[:])}
	cg.dir = filepath.Join(sriov.DefaultCgroupRoot, cg.rel)
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(cg.dir)
	if err != nil {
		t.Fatal(err)
	}
	var fst unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		t.Fatal(err)
	}
	cg.ino = fst.Ino
	rt := hwRuntimeProgram(t)
	t.Cleanup(func() {
		_ = link.RawDetachProgram(link.RawDetachProgramOptions{Target: int(f.Fd()), Program: rt, Attach: ebpf.AttachCGroupDevice})
		_ = f.Close()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := os.Remove(cg.dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", cg.dir, err)
				break
			}
		}
		if left := cg.pins(); len(left) > 0 {
			t.Errorf("device program maps left pinned: %v", left)
			for _, p := range left {
				_ = os.Remove(p)
			}
		}
	})
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: int(f.Fd()), Program: rt, Attach: ebpf.AttachCGroupDevice, Flags: unix.BPF_F_ALLOW_MULTI}); err != nil {
		t.Fatal(err)
	}
	info, err := rt.Info()
	if err != nil {
		t.Fatal(err)
	}
	cg.runtime, _ = info.ID()
	return cg
}

func (cg *hwCgroup) pins() []string {
	p, _ := filepath.Glob(filepath.Join(sriov.DefaultCgroupPinDir, fmt.Sprintf("dev-%d-*", cg.ino)))
	return p
}

// programs returns the device programs attached to the cgroup: id, name
// and, for one of nsmfwd's, the program it hands other devices to.
func (cg *hwCgroup) programs(t *testing.T) (ids []ebpf.ProgramID, names []string, next []ebpf.ProgramID) {
	t.Helper()
	f, err := os.Open(cg.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupDevice})
	if err != nil {
		t.Fatal(err)
	}
	for _, ap := range q.Programs {
		p, err := ebpf.NewProgramFromID(ap.ID)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		_ = p.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids, names = append(ids, ap.ID), append(names, info.Name)
		mapIDs, _ := info.MapIDs()
		if len(mapIDs) != 1 {
			continue
		}
		m, err := ebpf.NewMapFromID(mapIDs[0])
		if err != nil {
			t.Fatal(err)
		}
		var id uint32
		if err := m.Lookup(uint32(0), &id); err == nil {
			next = append(next, ebpf.ProgramID(id))
		}
		_ = m.Close()
	}
	return ids, names, next
}

// canOpen reports whether a process in the cgroup may open dev for
// reading and writing.
func (cg *hwCgroup) canOpen(t *testing.T, dev string) bool {
	t.Helper()
	out, err := exec.Command("sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs && exec 3<> %s", cg.dir, dev)).CombinedOutput()
	if err != nil {
		t.Logf("open %s in cgroup %s: %v: %s", dev, cg.rel, err, strings.TrimSpace(string(out)))
	}
	return err == nil
}

func charDev(t *testing.T, path string) (major, minor string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Fatalf("%s is not a character device", path)
	}
	return strconv.FormatUint(uint64(unix.Major(st.Rdev)), 10), strconv.FormatUint(uint64(unix.Minor(st.Rdev)), 10)
}

// vfioConn is connection n: a VFIO client in cgroup rel and a KERNEL
// endpoint.
func vfioConn(n int, rel, endpoint string) *forwarder.Conn {
	c := hwConn(n, "", endpoint, false)
	c.Client = forwarder.Side{Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: sriov.MechanismVFIO,
		Params: map[string]string{sriov.ParamCgroupDir: "/" + rel, sriov.ParamSRIOVToken: hwToken}}}
	return c
}

// TestHardwareVFIO gives a VFIO client a real VF: bound to vfio-pci, its
// /dev/vfio group handed over in the mechanism and opened from inside the
// client's cgroup v2 through nsmfwd's device program; Close gives the VF
// back its driver and the operator's netdev name, and the cgroup its
// runtime's program.
func TestHardwareVFIO(t *testing.T) {
	e := hardwarePF(t)
	e.requireVFs(t, 2)
	vi := e.n - 1
	vpci := e.pf.VFs[vi].PCI
	e.guard(t)
	// The operator named the VF's netdev and noted something on it.
	opName := fmt.Sprintf("opvf%d", vi)
	l, err := e.host.LinkByName(e.pf.VFs[vi].Netdevs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := e.host.LinkSetName(l, opName); err != nil {
		t.Fatal(err)
	}
	if err := e.host.LinkSetAlias(l, "operator-note"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := e.host.LinkByName(opName); err == nil {
			_ = e.host.LinkSetAlias(l, "")
			_ = e.host.LinkSetName(l, e.pf.VFs[vi].Netdevs[0])
		}
	})
	orig := map[int]hwVF{0: e.mustVF(t, 0), vi: e.mustVF(t, vi)}
	g, err := os.Readlink(filepath.Join("/sys/bus/pci/devices", vpci, "iommu_group"))
	if err != nil {
		t.Fatal(err)
	}
	group := filepath.Base(g)
	groupDev := "/dev/vfio/" + group
	endpoint := newHWNS(t)
	cg := newHWCgroup(t)
	if cg.canOpen(t, "/dev/vfio/vfio") || !cg.canOpen(t, "/dev/zero") {
		t.Fatal("the runtime stand-in's program does not decide as it should")
	}
	cfg := e.config(false, e.kernelRange("0"), sriov.VFRange{Range: strconv.Itoa(vi), Use: sriov.UseVFIO, Driver: sriov.DriverVFIO})
	state := filepath.Join(t.TempDir(), "state")
	dp := e.dataplane(t, cfg, state, nil)
	ctx := context.Background()
	c := vfioConn(1, cg.rel, endpoint.path)
	if err := dp.Check(ctx, c.ID, forwarder.SideClient, c.Client.Mechanism); err != nil {
		t.Fatal(err)
	}
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}

	now := e.mustVF(t, vi)
	if now.Driver != sriov.DriverVFIO || now.Override != sriov.DriverVFIO || now.Netdev != "" {
		t.Errorf("VFIO VF after Connect: %v", now)
	}
	p := c.Client.Mechanism.Params
	vmaj, vmin := charDev(t, "/dev/vfio/vfio")
	gmaj, gmin := charDev(t, groupDev)
	for k, v := range map[string]string{sriov.ParamIOMMUGroup: group, sriov.ParamPCIAddress: vpci, sriov.ParamVfioMajor: vmaj, sriov.ParamVfioMinor: vmin,
		sriov.ParamDeviceMajor: gmaj, sriov.ParamDeviceMinor: gmin, sriov.ParamVLAN: c.Endpoint.Mechanism.Params[sriov.ParamVLAN]} {
		if p[k] != v || v == "" {
			t.Errorf("client parameter %s = %q, want %q", k, p[k], v)
		}
	}
	recs := hwRecords(t, state)
	cr, er := hwRecordOf(t, recs, c.ID, forwarder.SideClient), hwRecordOf(t, recs, c.ID, forwarder.SideEndpoint)
	if cr.Use != sriov.UseVFIO || cr.PCI != vpci || cr.Cgroup != "/"+cg.rel || er.Index != 0 || strconv.Itoa(cr.VLAN) != p[sriov.ParamVLAN] {
		t.Errorf("records: client %+v endpoint %+v", cr, er)
	}
	if got, err := e.link.VF(ctx, e.pfName, vi); err != nil || got.MAC != cr.MAC || got.VLAN != cr.VLAN || cr.VLAN == 0 {
		t.Errorf("VFIO VF at the PF: %v (%v), want MAC %s VLAN %d", got, err, cr.MAC, cr.VLAN)
	}
	requireLink(t, endpoint, "nse1", e.pf.VFs[0].PCI, 1400, "10.99.1.2/24")

	ids, names, next := cg.programs(t)
	if len(ids) != 1 || names[0] != "nsmfwd_vfio" || !slices.Equal(next, []ebpf.ProgramID{cg.runtime}) {
		t.Errorf("device programs after Connect: %v %v handing over to %v, want nsmfwd_vfio handing over to the runtime's %d", ids, names, next, cg.runtime)
	}
	if len(cg.pins()) != 1 {
		t.Errorf("pinned maps: %v", cg.pins())
	}
	if !cg.canOpen(t, groupDev) || !cg.canOpen(t, "/dev/vfio/vfio") {
		t.Errorf("the client cgroup may not open %s and /dev/vfio/vfio", groupDev)
	}
	if !cg.canOpen(t, "/dev/zero") || cg.canOpen(t, "/dev/full") {
		t.Error("the runtime's decisions changed: /dev/zero denied or /dev/full allowed")
	}

	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	e.requireAsBefore(t, "after Close", orig)
	if _, err := os.Stat(groupDev); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after Close: %v", groupDev, err)
	}
	if ids, _, _ := cg.programs(t); !slices.Equal(ids, []ebpf.ProgramID{cg.runtime}) {
		t.Errorf("device programs after Close: %v, want the runtime's %d back", ids, cg.runtime)
	}
	if left := cg.pins(); len(left) > 0 {
		t.Errorf("pinned maps after Close: %v", left)
	}
	if cg.canOpen(t, "/dev/vfio/vfio") || !cg.canOpen(t, "/dev/zero") {
		t.Error("after Close the cgroup still opens /dev/vfio/vfio, or no longer /dev/zero")
	}
	if recs := hwRecords(t, state); len(recs) != 0 {
		t.Fatalf("records left after Close: %+v", recs)
	}
}

// TestHardwareCrashRestart: a forwarder dies (its dataplane dropped
// without Close), the next one reconciles with one of its two connections
// wanted: that one is adopted as it is, the other restored and freed.
func TestHardwareCrashRestart(t *testing.T) {
	e := hardwarePF(t)
	e.requireVFs(t, 4)
	e.guard(t)
	orig := map[int]hwVF{}
	for i := range 4 {
		orig[i] = e.mustVF(t, i)
	}
	client, endpoint := newHWNS(t), newHWNS(t)
	cfg := e.config(false, e.kernelRange("0-3"))
	state := filepath.Join(t.TempDir(), "state")
	ctx := context.Background()
	dp := e.dataplane(t, cfg, state, nil)
	c1, c2 := hwConn(1, client.path, endpoint.path, true), hwConn(2, client.path, endpoint.path, true)
	for _, c := range []*forwarder.Conn{c1, c2} {
		if err := dp.Connect(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	recs := hwRecords(t, state)
	c1c, c1e := hwRecordOf(t, recs, c1.ID, forwarder.SideClient), hwRecordOf(t, recs, c1.ID, forwarder.SideEndpoint)
	c2c, c2e := hwRecordOf(t, recs, c2.ID, forwarder.SideClient), hwRecordOf(t, recs, c2.ID, forwarder.SideEndpoint)
	cl := requireLink(t, client, "nsm1", c1c.PCI, 1400, "10.99.1.1/24")
	el := requireLink(t, endpoint, "nse1", c1e.PCI, 1400, "10.99.1.2/24")
	c1PF := map[int]sriov.VFSettings{c1c.Index: e.mustVF(t, c1c.Index).PF, c1e.Index: e.mustVF(t, c1e.Index).PF}

	// The crash: the dataplane is dropped, nothing is undone.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	hwPing(t, client, "10.99.1.2")

	pf := &countingPF{NetlinkPF: e.link}
	dp = e.dataplane(t, cfg, state, pf)
	if f := dp.Figures(); !slices.Equal(f.PFs[0].Counts, []sriov.VFCount{{Use: sriov.UseKernel, Allocated: 4}}) {
		t.Fatalf("after the restart, before Reconcile: %+v", f.PFs)
	}
	res, err := dp.Reconcile(ctx, []*forwarder.Conn{c1.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Adopted, []string{c1.ID}) || len(res.Rebuilt) != 0 || !slices.Equal(res.Removed, []string{c2.ID}) || len(res.Failed) != 0 {
		t.Fatalf("reconcile: %+v", res)
	}
	// Adopted: the same netdevs, and no PF setting touched.
	for i, s := range c1PF {
		if n := pf.count(i); n != 0 {
			t.Errorf("VF %d of the adopted connection: %d PF changes", i, n)
		}
		if got := e.mustVF(t, i).PF; got != s {
			t.Errorf("VF %d of the adopted connection: %v, was %v", i, got, s)
		}
	}
	if l := requireLink(t, client, "nsm1", c1c.PCI, 1400, "10.99.1.1/24"); l.Attrs().Index != cl.Attrs().Index {
		t.Errorf("nsm1 re-created: index %d, was %d", l.Attrs().Index, cl.Attrs().Index)
	}
	if l := requireLink(t, endpoint, "nse1", c1e.PCI, 1400, "10.99.1.2/24"); l.Attrs().Index != el.Attrs().Index {
		t.Errorf("nse1 re-created: index %d, was %d", l.Attrs().Index, el.Attrs().Index)
	}
	hwPing(t, client, "10.99.1.2")
	// Removed: the other connection's VFs are back and free.
	if links := nstest.Links(t, client.path); !slices.Equal(links, []string{"lo", "nsm1"}) {
		t.Errorf("client namespace: %v", links)
	}
	if links := nstest.Links(t, endpoint.path); !slices.Equal(links, []string{"lo", "nse1"}) {
		t.Errorf("endpoint namespace: %v", links)
	}
	e.requireAsBefore(t, "the connection not wanted", map[int]hwVF{c2c.Index: orig[c2c.Index], c2e.Index: orig[c2e.Index]})
	if recs := hwRecords(t, state); len(recs) != 2 || recs[0].ConnID != c1.ID || recs[1].ConnID != c1.ID {
		t.Errorf("records after Reconcile: %+v", recs)
	}
	if f := dp.Figures(); !slices.Equal(f.PFs[0].Counts, []sriov.VFCount{{Use: sriov.UseKernel, Free: 2, Allocated: 2}}) || f.RestoreFailures != 0 {
		t.Errorf("figures after Reconcile: %+v", f)
	}
	if err := dp.Disconnect(ctx, c1.ID); err != nil {
		t.Fatal(err)
	}
	e.requireAsBefore(t, "after Close", orig)
	if recs := hwRecords(t, state); len(recs) != 0 {
		t.Fatalf("records left: %+v", recs)
	}
}

// TestHardwareBadInput: what the dataplane refuses, with which code, and
// that a refusal leaves every VF as it was.
func TestHardwareBadInput(t *testing.T) {
	e := hardwarePF(t)
	ctx := context.Background()
	newFails := func(t *testing.T, cfg *sriov.Config, want string) {
		t.Helper()
		dp, err := sriov.New(ctx, sriov.Options{Name: hwName, Config: cfg, StateDir: filepath.Join(t.TempDir(), "state"), Logger: hwLogger(t)})
		if err == nil {
			_ = dp.Close()
			t.Fatal("accepted")
		}
		if forwarder.CodeOf(err) != forwarder.CodeFailedPrecondition || !strings.Contains(err.Error(), want) {
			t.Fatalf("New: %v (code %v), want FailedPrecondition saying %q", err, forwarder.CodeOf(err), want)
		}
		t.Logf("New: %v", err)
	}

	t.Run("NotSRIOVCapable", func(t *testing.T) {
		name := os.Getenv("NSMFWD_SRIOV_NOT_SRIOV")
		if name == "" {
			t.Skip("set NSMFWD_SRIOV_NOT_SRIOV to the netdev of a PCI NIC without SR-IOV")
		}
		e.guard(t)
		pci, err := e.sys.PCIOfNetdev(name)
		if err != nil {
			t.Fatal(err)
		}
		drv, err := e.sys.Driver(pci)
		if err != nil {
			t.Fatal(err)
		}
		cfg := &sriov.Config{Version: 1, PhysicalFunctions: []sriov.PFConfig{{Name: name, PFDriver: drv, ServiceDomains: []string{"hw"},
			Capabilities: []string{"test"}, VFs: []sriov.VFRange{{Range: "0", Use: sriov.UseKernel, Driver: "igbvf"}}}}}
		newFails(t, cfg, "not SR-IOV capable")
	})

	t.Run("NoVFsEnabled", func(t *testing.T) {
		name := os.Getenv("NSMFWD_SRIOV_PF_NOVFS")
		if name == "" {
			t.Skip("set NSMFWD_SRIOV_PF_NOVFS to the netdev of an SR-IOV PF with sriov_numvfs 0")
		}
		e.guard(t)
		pci, err := e.sys.PCIOfNetdev(name)
		if err != nil {
			t.Fatal(err)
		}
		numvfs := filepath.Join("/sys/bus/pci/devices", pci, "sriov_numvfs")
		if n := strings.TrimSpace(readFile(t, numvfs)); n != "0" {
			t.Fatalf("%s: sriov_numvfs %s, want 0", name, n)
		}
		drv, err := e.sys.Driver(pci)
		if err != nil {
			t.Fatal(err)
		}
		cfg := &sriov.Config{Version: 1, PhysicalFunctions: []sriov.PFConfig{{Name: name, PFDriver: drv, ServiceDomains: []string{"hw"},
			Capabilities: []string{"test"}, VFs: []sriov.VFRange{{Range: "0-1", Use: sriov.UseKernel, Driver: "igbvf"}}}}}
		newFails(t, cfg, "sriov_numvfs is 0")
		if n := strings.TrimSpace(readFile(t, numvfs)); n != "0" {
			t.Fatalf("%s: sriov_numvfs changed to %s", name, n)
		}
	})

	t.Run("VFsHeld", func(t *testing.T) {
		// One connection's worth of VFs (its client's and its endpoint's):
		// while it holds them, another connection gets none.
		e.requireVFs(t, 2)
		e.guard(t)
		client, endpoint := newHWNS(t), newHWNS(t)
		state := filepath.Join(t.TempDir(), "state")
		dp := e.dataplane(t, e.config(false, e.kernelRange("0-1")), state, nil)
		c1, c2 := hwConn(1, client.path, endpoint.path, true), hwConn(2, client.path, endpoint.path, true)
		if err := dp.Connect(ctx, c1); err != nil {
			t.Fatal(err)
		}
		held := map[int]hwVF{0: e.mustVF(t, 0), 1: e.mustVF(t, 1)}
		cl := requireLink(t, client, "nsm1", c1.Client.Mechanism.Params[sriov.ParamPCIAddress], 1400, "10.99.1.1/24")
		if err := dp.Check(ctx, c2.ID, forwarder.SideClient, c2.Client.Mechanism); forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
			t.Fatalf("Check of a second connection: %v, want ResourceExhausted", err)
		}
		if err := dp.Connect(ctx, c2); forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
			t.Fatalf("Connect of a second connection: %v, want ResourceExhausted", err)
		} else {
			t.Logf("Connect: %v", err)
		}
		e.requireAsBefore(t, "the held VFs", held)
		if l := requireLink(t, client, "nsm1", c1.Client.Mechanism.Params[sriov.ParamPCIAddress], 1400, "10.99.1.1/24"); l.Attrs().Index != cl.Attrs().Index {
			t.Error("the first connection's netdev was re-created")
		}
		if links := nstest.Links(t, client.path); !slices.Equal(links, []string{"lo", "nsm1"}) {
			t.Errorf("client namespace: %v", links)
		}
		hwPing(t, client, "10.99.1.2")
		if recs := hwRecords(t, state); len(recs) != 2 || recs[0].ConnID != c1.ID || recs[1].ConnID != c1.ID {
			t.Errorf("records: %+v", recs)
		}
		if err := dp.Disconnect(ctx, c1.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("PoolExhausted", func(t *testing.T) {
		// Three VFs: the second connection's client gets the last one, its
		// endpoint none; the client's VF is given back as it was.
		e.requireVFs(t, 3)
		e.guard(t)
		client, endpoint := newHWNS(t), newHWNS(t)
		state := filepath.Join(t.TempDir(), "state")
		dp := e.dataplane(t, e.config(false, e.kernelRange("0-2")), state, nil)
		c1, c2 := hwConn(1, client.path, endpoint.path, true), hwConn(2, client.path, endpoint.path, true)
		if err := dp.Connect(ctx, c1); err != nil {
			t.Fatal(err)
		}
		recs := hwRecords(t, state)
		free := 3 - recs[0].Index - recs[1].Index // the index not taken of 0, 1, 2
		before := map[int]hwVF{}
		for i := range 3 {
			before[i] = e.mustVF(t, i)
		}
		if err := dp.Check(ctx, c2.ID, forwarder.SideClient, c2.Client.Mechanism); err != nil {
			t.Fatalf("Check with VF %d free: %v", free, err)
		}
		err := dp.Connect(ctx, c2)
		if forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
			t.Fatalf("Connect with one VF for two sides: %v, want ResourceExhausted", err)
		}
		t.Logf("Connect: %v", err)
		e.requireAsBefore(t, "after the refused Connect", before)
		if links := nstest.Links(t, client.path); !slices.Equal(links, []string{"lo", "nsm1"}) {
			t.Errorf("client namespace after the refused Connect: %v", links)
		}
		if links := nstest.Links(t, endpoint.path); !slices.Equal(links, []string{"lo", "nse1"}) {
			t.Errorf("endpoint namespace after the refused Connect: %v", links)
		}
		if recs := hwRecords(t, state); len(recs) != 2 || recs[0].ConnID != c1.ID || recs[1].ConnID != c1.ID {
			t.Errorf("records after the refused Connect: %+v", recs)
		}
		f := dp.Figures()
		if f.AllocationFailures[hwToken] == 0 || !slices.Equal(f.PFs[0].Counts, []sriov.VFCount{{Use: sriov.UseKernel, Free: 1, Allocated: 2}}) {
			t.Errorf("figures: %+v", f)
		}
		if err := dp.Check(ctx, c2.ID, forwarder.SideClient, c2.Client.Mechanism); err != nil {
			t.Errorf("Check after the rollback, VF %d free again: %v", free, err)
		}
		if err := dp.Disconnect(ctx, c1.ID); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("VFIOCgroupMissing", func(t *testing.T) {
		// A VFIO client whose cgroup does not exist: the VF was already
		// bound to vfio-pci when that shows, and is given back.
		e.requireVFs(t, 2)
		e.guard(t)
		endpoint := newHWNS(t)
		vi := e.n - 1
		cfg := e.config(false, e.kernelRange("0"), sriov.VFRange{Range: strconv.Itoa(vi), Use: sriov.UseVFIO, Driver: sriov.DriverVFIO})
		state := filepath.Join(t.TempDir(), "state")
		dp := e.dataplane(t, cfg, state, nil)
		c := vfioConn(1, "nsmfwd-hw-no-such-cgroup", endpoint.path)
		err := dp.Connect(ctx, c)
		if forwarder.CodeOf(err) != forwarder.CodeNotFound {
			t.Fatalf("Connect: %v, want NotFound", err)
		}
		t.Logf("Connect: %v", err)
		if recs := hwRecords(t, state); len(recs) != 0 {
			t.Errorf("records after the refused Connect: %+v", recs)
		}
		// The guard checks the VFs.
	})
}
