package sriov_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
)

// world is a node with a stand-in NIC, a client and an endpoint namespace.
type world struct {
	t                        *testing.T
	node, client, endpoint   string // namespace paths
	clientName, endpointName string // namespace names
	nic                      *sriovtest.NIC
	cfg                      *sriov.Config
	state                    string
	cgroups                  *sriovtest.Cgroups
	before                   map[string]netdevState
}

// netdevState is what the tests compare of a VF stand-in netdev.
type netdevState struct {
	MTU   int
	Up    bool
	Alias string
	MAC   string
}

func newWorld(t *testing.T) *world {
	nstest.RequireRoot(t)
	w := &world{t: t, state: filepath.Join(t.TempDir(), "state"), cgroups: &sriovtest.Cgroups{}}
	_, w.node = nstest.New(t)
	w.clientName, w.client = nstest.New(t)
	w.endpointName, w.endpoint = nstest.New(t)
	w.nic = sriovtest.NewNIC(t, w.node)
	w.cfg = w.nic.Config()
	w.before = w.nodeNetdevs()
	return w
}

func (w *world) dataplane() *sriov.Dataplane {
	w.t.Helper()
	dp, err := sriov.New(context.Background(), sriov.Options{
		Name: "fwd", Config: w.cfg, StateDir: w.state, HostNetNS: w.node, SysfsRoot: w.nic.SysfsRoot,
		PFLink: w.nic.Link, PCIDriver: w.nic.PCI, Cgroups: w.cgroups,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = dp.Close() })
	return dp
}

func handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// nodeNetdevs returns the state of the VF stand-ins in the node namespace.
func (w *world) nodeNetdevs() map[string]netdevState {
	w.t.Helper()
	links, err := handle(w.t, w.node).LinkList()
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[string]netdevState{}
	for _, l := range links {
		a := l.Attrs()
		if strings.HasPrefix(a.Name, "ens1f0v") {
			out[a.Name] = netdevState{MTU: a.MTU, Up: a.RawFlags&1 != 0, Alias: a.Alias, MAC: a.HardwareAddr.String()}
		}
	}
	return out
}

// requireRestored fails unless every VF is as it was: PF-side settings and
// netdevs (name, MTU, state, alias, MAC) in the node namespace.
func (w *world) requireRestored(what string) {
	w.t.Helper()
	if changed := w.nic.Link.Changed(); len(changed) > 0 {
		w.t.Fatalf("%s: VF settings not restored: %v", what, changed)
	}
	now := w.nodeNetdevs()
	for name, st := range w.before {
		if now[name] != st {
			w.t.Errorf("%s: netdev %s is %+v, was %+v", what, name, now[name], st)
		}
	}
	if len(now) != len(w.before) {
		w.t.Errorf("%s: %d VF netdevs in the node namespace, were %d", what, len(now), len(w.before))
	}
}

// conn builds a KERNEL connection n between the client and the endpoint.
func (w *world) conn(n int, clientNS string) *forwarder.Conn {
	if clientNS == "" {
		clientNS = w.client
	}
	return &forwarder.Conn{
		ID: fmt.Sprintf("conn-%d", n), Payload: forwarder.PayloadEthernet, MTU: 1400,
		Client: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel,
				Params: map[string]string{forwarder.ParamNetNSURL: "file://" + clientNS, forwarder.ParamIfName: fmt.Sprintf("nsm%d", n)}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.0.%d.1/24", n))}},
		},
		Endpoint: forwarder.Side{
			Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel,
				Params: map[string]string{forwarder.ParamNetNSURL: "file://" + w.endpoint, forwarder.ParamIfName: fmt.Sprintf("nse%d", n)}},
			IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.0.%d.2/24", n))}},
		},
	}
}

func (w *world) ping(ns string, to string) {
	w.t.Helper()
	if out, err := nstest.Exec(w.t, ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", to); err != nil {
		w.t.Fatalf("ping %s from %s: %v\n%s", to, ns, err, out)
	}
}

func records(t testing.TB, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return len(entries)
}

func TestConnectRestoresEveryField(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	ctx := context.Background()
	c := w.conn(1, "")
	if err := dp.Check(ctx, c.ID, forwarder.SideClient, c.Client.Mechanism); err != nil {
		t.Fatal(err)
	}
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	// Two VFs were given MAC and VLAN 100 through the PF; everything else
	// of their settings is as it was.
	changed := w.nic.Link.Changed()
	if len(changed) != 2 {
		t.Fatalf("changed VFs: %v", changed)
	}
	for _, line := range changed {
		var i int
		_, _ = fmt.Sscanf(line, "ens1f0/%d:", &i)
		want := sriovtest.Original(i)
		want.VLAN, want.QoS = 100, 0
		if !strings.HasSuffix(line, ": "+strings.Replace(want.String(), "mac="+want.MAC, line[strings.Index(line, "mac="):strings.Index(line, " vlan")], 1)) {
			t.Errorf("VF %d: %s, want all but MAC and VLAN as %s", i, line, sriovtest.Original(i))
		}
	}
	if got := c.Client.Mechanism.Params[sriov.ParamPCIAddress]; got != "0000:3b:02.0" {
		t.Errorf("client pciAddress %q", got)
	}
	if c.Client.Mechanism.Params[sriov.ParamVLAN] != "100" || c.Endpoint.Mechanism.Params[sriov.ParamVLAN] != "100" {
		t.Errorf("vlan params: %v %v", c.Client.Mechanism.Params, c.Endpoint.Mechanism.Params)
	}
	l, err := handle(t, w.client).LinkByName("nsm1")
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1400 || l.Attrs().Alias != "nsmfwd/fwd/conn-1/client" {
		t.Fatalf("client netdev: mtu %d alias %q", l.Attrs().MTU, l.Attrs().Alias)
	}
	w.ping(w.clientName, "10.0.1.2")
	w.ping(w.endpointName, "10.0.1.1")
	st, err := dp.Stats(ctx, c.ID)
	if err != nil || st.ClientToEndpoint.Packets < 4 || st.EndpointToClient.Packets < 4 {
		t.Fatalf("stats %+v %v", st, err)
	}
	// A refresh changes nothing.
	ops := len(w.nic.Link.Ops())
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if n := len(w.nic.Link.Ops()); n != ops {
		t.Fatalf("refresh made %d PF changes", n-ops)
	}
	if n := records(t, w.state); n != 2 {
		t.Fatalf("%d records, want 2", n)
	}
	// A refresh with another interface name renames it; one with another
	// namespace moves the VF there.
	c.Client.Mechanism.Params[forwarder.ParamIfName] = "renamed0"
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if _, err := handle(t, w.client).LinkByName("renamed0"); err != nil {
		t.Fatalf("after the rename: %v", err)
	}
	otherName, other := nstest.New(t)
	c.Client.Mechanism.Params[forwarder.ParamNetNSURL] = "file://" + other
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if _, err := handle(t, other).LinkByName("renamed0"); err != nil {
		t.Fatalf("after the move: %v", err)
	}
	if _, err := handle(t, w.client).LinkByName("renamed0"); err == nil {
		t.Fatal("the VF is still in the old namespace")
	}
	w.ping(otherName, "10.0.1.2")
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatalf("second Disconnect: %v", err)
	}
	w.requireRestored("after Disconnect")
	if n := records(t, w.state); n != 0 {
		t.Fatalf("%d records left", n)
	}
	if _, err := dp.Stats(ctx, c.ID); forwarder.CodeOf(err) != forwarder.CodeNotFound {
		t.Fatalf("Stats of a closed connection: %v", err)
	}
}

// TestExhaustion: the pool runs out, the Request gets ResourceExhausted
// and nothing is left behind, also when the endpoint side is the one that
// finds no VF after the client side got one.
func TestExhaustion(t *testing.T) {
	w := newWorld(t)
	w.cfg.PhysicalFunctions[0].VFs[0].Range = "0-10" // 11 kernel VFs
	dp := w.dataplane()
	ctx := context.Background()
	for i := range 5 {
		if err := dp.Connect(ctx, w.conn(i, "")); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	changedBefore := w.nic.Link.Changed()
	last := w.conn(5, "")
	if err := dp.Check(ctx, last.ID, forwarder.SideClient, last.Client.Mechanism); err != nil {
		t.Fatalf("Check with one VF left: %v", err)
	}
	err := dp.Connect(ctx, last)
	if forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
		t.Fatalf("endpoint side without a VF: %v, want ResourceExhausted", err)
	}
	if got := w.nic.Link.Changed(); !slices.Equal(got, changedBefore) {
		t.Fatalf("the failed Connect left VF settings changed:\n%v\nwas\n%v", got, changedBefore)
	}
	if n := records(t, w.state); n != 10 {
		t.Fatalf("%d records, want 10", n)
	}
	if _, err := handle(t, w.client).LinkByName("nsm5"); err == nil {
		t.Fatal("the failed Connect left nsm5 in the client namespace")
	}
	// Take the last VF with a client of another pool user: now Check
	// already refuses.
	w.cfg.PhysicalFunctions[0].VFs[0].Range = "0-9"
	dp2 := w.dataplane() // same records: 10 VFs taken of 10
	if err := dp2.Check(ctx, last.ID, forwarder.SideClient, last.Client.Mechanism); forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
		t.Fatalf("Check on an empty pool: %v", err)
	}
	f := dp2.Figures()
	if f.AllocationFailures["sriov-a.example/10G"] != 1 || f.PFs[0].Counts[0] != (sriov.VFCount{Use: "kernel", Allocated: 10}) {
		t.Fatalf("figures: %+v", f)
	}
	for i := range 5 {
		if err := dp.Disconnect(ctx, fmt.Sprintf("conn-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	w.requireRestored("after Disconnect")
}

// TestCrashRestart: connections survive a forwarder that dies; the next
// one adopts the wanted ones, restores the unwanted one and reclaims the
// one whose client namespace died meanwhile.
func TestCrashRestart(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	dp := w.dataplane()
	doomedName, doomed := nstest.New(t)
	conns := []*forwarder.Conn{w.conn(1, ""), w.conn(2, doomed), w.conn(3, "")}
	for _, c := range conns {
		if err := dp.Connect(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	_ = dp.Close() // the crash: nothing undone
	w.ping(w.clientName, "10.0.1.2")
	nstest.Delete(t, doomedName)

	dp = w.dataplane()
	if f := dp.Figures(); f.PFs[0].Counts[0].Allocated != 6 {
		t.Fatalf("after restart, before Reconcile: %+v", f.PFs[0])
	}
	res, err := dp.Reconcile(ctx, []*forwarder.Conn{conns[0].Clone(), conns[1].Clone()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Adopted, []string{"conn-1"}) || !slices.Equal(res.Removed, []string{"conn-3"}) || res.Failed["conn-2"] == nil {
		t.Fatalf("reconcile: %+v", res)
	}
	f := dp.Figures()
	if f.Reclaimed != 1 || f.PFs[0].Counts[0].Allocated != 2 {
		t.Fatalf("figures: %+v", f)
	}
	// conn-2's client VF stand-in died with its namespace (a real VF
	// would have come back): its netdev restore failed, its PF settings
	// were restored all the same.
	if f.RestoreFailures == 0 {
		t.Fatalf("restore failures: %+v", f)
	}
	w.ping(w.clientName, "10.0.1.2")
	if _, err := handle(t, w.client).LinkByName("nsm3"); err == nil {
		t.Fatal("conn-3's VF is still in the client namespace")
	}
	if err := dp.Disconnect(ctx, "conn-1"); err != nil {
		t.Fatal(err)
	}
	if changed := w.nic.Link.Changed(); len(changed) > 0 {
		t.Fatalf("VF settings not restored: %v", changed)
	}
	if n := records(t, w.state); n != 0 {
		t.Fatalf("%d records left", n)
	}
}

// TestVFIO: a VFIO client gets a whole IOMMU group bound to vfio-pci, the
// device numbers in its mechanism and the devices in its cgroup; Close
// undoes all of it.
func TestVFIO(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	dp := w.dataplane()
	vfio := func(n int, cg string) *forwarder.Conn {
		c := w.conn(n, "")
		c.Client.Mechanism = forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: sriov.MechanismVFIO,
			Params: map[string]string{sriov.ParamCgroupDir: cg, sriov.ParamTokenID: "sriov-a.example/10G"}}
		c.Client.IP = forwarder.IPConfig{}
		return c
	}
	sys := sriov.Sysfs{Root: w.nic.SysfsRoot}
	c1, c2 := vfio(1, "/kubepods/pod1/c1"), vfio(2, "/kubepods/pod1/c1")
	for _, c := range []*forwarder.Conn{c1, c2} {
		if err := dp.Check(ctx, c.ID, forwarder.SideClient, c.Client.Mechanism); err != nil {
			t.Fatal(err)
		}
		if err := dp.Connect(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	p := c1.Client.Mechanism.Params
	want := map[string]string{"iommuGroup": "112", "vfioMajor": "10", "vfioMinor": "196", "deviceMajor": fmt.Sprint(sriovtest.VFIOMajor),
		"deviceMinor": "112", "pciAddress": "0000:3b:03.4"}
	for k, v := range want {
		if p[k] != v {
			t.Errorf("param %s = %q, want %q", k, p[k], v)
		}
	}
	for _, vf := range []string{"0000:3b:03.4", "0000:3b:03.5", "0000:3b:03.6", "0000:3b:03.7"} {
		if drv, _ := sys.Driver(vf); drv != sriov.DriverVFIO {
			t.Errorf("%s bound to %q", vf, drv)
		}
	}
	grants := w.cgroups.Granted("/kubepods/pod1/c1")
	if !slices.Equal(grants, []sriov.Device{{Major: 10, Minor: 196}, {Major: sriovtest.VFIOMajor, Minor: 112}, {Major: sriovtest.VFIOMajor, Minor: 114}}) {
		t.Fatalf("cgroup grants %v", grants)
	}
	c3 := vfio(3, "/kubepods/pod2/c1")
	if err := dp.Check(ctx, c3.ID, forwarder.SideClient, c3.Client.Mechanism); forwarder.CodeOf(err) != forwarder.CodeResourceExhausted {
		t.Fatalf("third VFIO client: %v", err)
	}
	// The endpoint side is a kernel VF reached through the switch.
	if _, err := handle(t, w.endpoint).LinkByName("nse1"); err != nil {
		t.Fatal(err)
	}
	if err := dp.Disconnect(ctx, c1.ID); err != nil {
		t.Fatal(err)
	}
	if grants := w.cgroups.Granted("/kubepods/pod1/c1"); !slices.Equal(grants, []sriov.Device{{Major: 10, Minor: 196}, {Major: sriovtest.VFIOMajor, Minor: 114}}) {
		t.Fatalf("cgroup grants after closing one: %v", grants)
	}
	if err := dp.Disconnect(ctx, c2.ID); err != nil {
		t.Fatal(err)
	}
	if grants := w.cgroups.Granted("/kubepods/pod1/c1"); len(grants) != 0 {
		t.Fatalf("cgroup grants after Close: %v", grants)
	}
	for _, vf := range []string{"0000:3b:03.4", "0000:3b:03.5", "0000:3b:03.6", "0000:3b:03.7"} {
		drv, _ := sys.Driver(vf)
		ov, _ := sys.DriverOverride(vf)
		if drv != "iavf" || ov != "" {
			t.Errorf("%s: driver %q override %q after Close", vf, drv, ov)
		}
	}
	w.requireRestored("after Close")
	ops := strings.Join(w.nic.PCI.Ops(), "\n")
	for _, want := range []string{`driver_override 0000:3b:03.4 "vfio-pci"`, "unbind 0000:3b:03.4", "probe 0000:3b:03.4", `driver_override 0000:3b:03.4 ""`} {
		if !strings.Contains(ops, want) {
			t.Errorf("PCI ops lack %q:\n%s", want, ops)
		}
	}
}

func TestCollector(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	if err := dp.Connect(context.Background(), w.conn(1, "")); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(sriov.NewCollector(dp))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			got[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for k, v := range map[string]float64{
		"nsmfwd_sriov_vfs,pool=sriov-a.example/10G,state=allocated,use=kernel": 2,
		"nsmfwd_sriov_vfs,pool=sriov-a.example/10G,state=free,use=kernel":      10,
		"nsmfwd_sriov_vfs,pool=sriov-a.example/10G,state=free,use=vfio":        4,
		"nsmfwd_sriov_pf_vfs,pf=0000:3b:00.0,state=allocated,use=kernel":       2,
		"nsmfwd_sriov_restore_failures_total":                                  0,
		"nsmfwd_sriov_reclaimed_total":                                         0,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if err := dp.Disconnect(context.Background(), "conn-1"); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentConnects: connections made at once get VLANs of their own
// (the switch joins only pairs) and all carry traffic.
func TestConcurrentConnects(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	ctx := context.Background()
	conns := make([]*forwarder.Conn, 6)
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = w.conn(i, "")
		wg.Go(func() { errs[i] = dp.Connect(ctx, conns[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	vlans := map[string]bool{}
	for i, c := range conns {
		vlans[c.Client.Mechanism.Params[sriov.ParamVLAN]] = true
		w.ping(w.clientName, fmt.Sprintf("10.0.%d.2", i))
	}
	if len(vlans) != len(conns) {
		t.Fatalf("VLANs %v for %d connections", vlans, len(conns))
	}
	for _, c := range conns {
		wg.Go(func() { _ = dp.Disconnect(ctx, c.ID) })
	}
	wg.Wait()
	w.requireRestored("after Close")
}

// TestRestoreFallsBackToSafeDefaults: a PF that refuses an original value
// (trust on, here) gets the VF's safe defaults instead, the failure is
// counted and the VF goes back to the pool.
func TestRestoreFallsBackToSafeDefaults(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	ctx := context.Background()
	c := w.conn(1, "")
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	w.nic.Link.FailSet("ens1f0", 0, func(s sriov.VFSettings) error {
		if s.Trust {
			return errors.New("operation not supported")
		}
		return nil
	})
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	got, err := w.nic.Link.VF(ctx, "ens1f0", 0)
	if err != nil || got != sriov.SafeVFSettings(sriovtest.Original(0).MAC) {
		t.Fatalf("VF 0: %v (%v), want the safe defaults %v", got, err, sriov.SafeVFSettings(sriovtest.Original(0).MAC))
	}
	f := dp.Figures()
	if f.RestoreFailures != 1 || f.PFs[0].Counts[0].Allocated != 0 {
		t.Fatalf("figures: %+v", f)
	}
	if n := records(t, w.state); n != 0 {
		t.Fatalf("%d records left", n)
	}
}

// TestRestoreReportsUnsupportedFields: a PF whose driver does not support
// one setting (igb: the VF link state) restores every other field; the
// refusal is counted and logged, not answered with safe defaults that
// would undo the rest.
func TestRestoreReportsUnsupportedFields(t *testing.T) {
	w := newWorld(t)
	dp := w.dataplane()
	ctx := context.Background()
	c := w.conn(1, "")
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	// The connection changed the link state behind our back (as another
	// tool could); the restore must ask for the original one.
	cur, _ := w.nic.Link.VF(ctx, "ens1f0", 0)
	cur.LinkState = sriov.VFLinkStateAuto
	if err := w.nic.Link.SetVF(ctx, "ens1f0", 0, cur); err != nil {
		t.Fatal(err)
	}
	w.nic.Link.FailSet("ens1f0", 0, func(s sriov.VFSettings) error {
		if s.LinkState != sriov.VFLinkStateAuto {
			return &sriov.UnsupportedError{Fields: []string{"link state"}, Err: errors.New("set link state: operation not supported")}
		}
		return nil
	})
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	want := sriovtest.Original(0)
	want.LinkState = sriov.VFLinkStateAuto
	if got, err := w.nic.Link.VF(ctx, "ens1f0", 0); err != nil || got != want {
		t.Fatalf("VF 0: %v (%v), want every field but the link state restored: %v", got, err, want)
	}
	if f := dp.Figures(); f.RestoreFailures != 1 || f.PFs[0].Counts[0].Allocated != 0 {
		t.Fatalf("figures: %+v", f)
	}
	w.nic.Link.FailSet("ens1f0", 0, nil)
	if err := w.nic.Link.SetVF(ctx, "ens1f0", 0, sriovtest.Original(0)); err != nil {
		t.Fatal(err)
	}
}
