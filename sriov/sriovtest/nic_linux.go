package sriovtest

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// NIC stands in for an SR-IOV NIC on a node namespace (root only):
//
//   - the PF netdev and each VF netdev are veth ends in the node namespace;
//   - each VF's other end is a port of the NIC's embedded switch, in a
//     namespace of the NIC's own;
//   - the switch joins two ports when their VFs are given the same VLAN
//     (other than 0) through the PF, and only then: a tc u32 filter with a
//     mirred redirect on each port's ingress, as a VEB forwards between
//     the VFs of one VLAN;
//   - the PF settings are a recording fake (netlink's VF calls do not work
//     on veth), and sysfs is a fake tree whose VF netdevs are these veths.
type NIC struct {
	SysfsRoot string
	Spec      PFSpec
	Link      *PFLink
	PCI       *PCI
	nicNS     string

	t     testing.TB
	mu    sync.Mutex
	vlans map[int]int // VF index -> VLAN
	peers map[int]int // VF index -> port it is joined to
}

// NewNIC builds the stand-in NIC with StandardPF's 16 VFs. The node
// namespace is the one at nodeNS (/run/netns/NAME).
func NewNIC(t testing.TB, nodeNS string) *NIC {
	t.Helper()
	nicName, _ := nstest.New(t)
	spec := StandardPF("ens1f0", "ens1f0v")
	n := &NIC{
		SysfsRoot: t.TempDir(), Spec: spec, Link: NewPFLink(spec.Netdev, len(spec.VFs)),
		nicNS: nicName, t: t, vlans: map[int]int{}, peers: map[int]int{},
	}
	WriteSysfs(t, n.SysfsRoot, spec)
	n.PCI = &PCI{Root: n.SysfsRoot, Native: map[string]string{}}
	for _, vf := range spec.VFs {
		n.PCI.Native[vf.PCI] = vf.Driver
	}
	node := filepath.Base(nodeNS)
	var ipb, tcb strings.Builder
	fmt.Fprintf(&ipb, "link add pfport type veth peer name %s netns %s\nlink set pfport up\n", spec.Netdev, node)
	for i, vf := range spec.VFs {
		port := portName(i)
		fmt.Fprintf(&ipb, "link add %s type veth peer name %s netns %s\nlink set %s up\n", port, vf.Netdev, node, port)
		fmt.Fprintf(&tcb, "qdisc add dev %s clsact\n", port)
	}
	n.batch("ip", ipb.String())
	n.batch("tc", tcb.String())
	// Varied original netdev state, for the restore checks: even VFs up,
	// VF 1 with an operator's alias.
	ipb.Reset()
	fmt.Fprintf(&ipb, "link set %s up\n", spec.Netdev)
	for i, vf := range spec.VFs {
		if i%2 == 0 {
			fmt.Fprintf(&ipb, "link set %s up\n", vf.Netdev)
		}
	}
	fmt.Fprintf(&ipb, "link set %s alias operator-note\n", spec.VFs[1].Netdev)
	n.batchIn(node, ipb.String())
	for i := range spec.VFs {
		n.vlans[i] = Original(i).VLAN
	}
	n.Link.OnSet = n.onSet
	return n
}

func portName(i int) string { return fmt.Sprintf("port%d", i) }

func (n *NIC) batch(tool, script string) {
	n.t.Helper()
	cmd := exec.Command(tool, "-n", n.nicNS, "-batch", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("%s -n %s -batch: %v\n%s", tool, n.nicNS, err, out)
	}
}

func (n *NIC) batchIn(ns, script string) {
	n.t.Helper()
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("ip -n %s -batch: %v\n%s", ns, err, out)
	}
}

// Config returns a config for the stand-in PF: VFs 0-11 for kernel use,
// 12-15 for VFIO, VLANs 100-199, one pool "sriov-a.example/10G" (the
// default) and its netdev name for discovery.
func (n *NIC) Config() *sriov.Config {
	return &sriov.Config{
		Version:      1,
		DefaultToken: "sriov-a.example/10G",
		PhysicalFunctions: []sriov.PFConfig{{
			Name: n.Spec.Netdev, PFDriver: n.Spec.Driver, Capabilities: []string{"10G"},
			ServiceDomains: []string{"sriov-a.example"}, VLANs: "100-199",
			VFs: []sriov.VFRange{
				{Range: "0-11", Use: sriov.UseKernel, Driver: "iavf"},
				{Range: "12-15", Use: sriov.UseVFIO, Driver: sriov.DriverVFIO},
			},
		}},
	}
}

// onSet is the switch: it joins the two ports of each VLAN.
func (n *NIC) onSet(_ string, vf int, s sriov.VFSettings) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.vlans[vf] = s.VLAN
	want := map[int]int{}
	members := map[int][]int{}
	for i, v := range n.vlans {
		if v != 0 {
			members[v] = append(members[v], i)
		}
	}
	for _, m := range members {
		if len(m) == 2 {
			want[m[0]], want[m[1]] = m[1], m[0]
		}
	}
	var script strings.Builder
	for i := range n.vlans {
		have, had := n.peers[i]
		w, wanted := want[i]
		switch {
		case wanted && (!had || have != w):
			fmt.Fprintf(&script, "filter replace dev %s ingress pref 1 protocol all u32 match u32 0 0 action mirred egress redirect dev %s\n", portName(i), portName(w))
		case had && !wanted:
			fmt.Fprintf(&script, "filter del dev %s ingress pref 1\n", portName(i))
		}
	}
	n.peers = want
	for line := range strings.Lines(script.String()) {
		// A port whose VF died with its namespace (a veth end does not
		// come back as a real VF would) has nothing left to change.
		out, err := exec.Command("tc", append([]string{"-n", n.nicNS}, strings.Fields(line)...)...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "Cannot find device") {
			n.t.Errorf("fake switch: tc %s: %v\n%s", line, err, out)
		}
	}
}

// Joined returns the pairs of VFs the switch joins now.
func (n *NIC) Joined() map[int]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[int]int{}
	for k, v := range n.peers {
		out[k] = v
	}
	return out
}
