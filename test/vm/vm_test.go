package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/test/vm/guest"
)

// The guest's devices, at fixed PCI addresses: an igb PF whose VFs the
// tests use, a second igb PF left with sriov_numvfs 0, and an e1000 NIC,
// which has no SR-IOV at all (the bad-input cases).
const (
	pciPF      = "0000:01:00.0"
	pciPFNoVF  = "0000:02:00.0"
	pciNoSRIOV = "0000:00:05.0"
	// numVFs is how many VFs the "operator" enables (igb's sriov_totalvfs
	// is 7 in QEMU).
	numVFs = 7
)

// devices are QEMU's arguments for them. The igb PFs sit behind PCIe root
// ports so their VFs have buses of their own; hub ports give them a link
// (up, carrier) that leads nowhere.
var devices = []string{
	"-netdev", "hubport,id=n0,hubid=0", "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,addr=0x3",
	"-device", "igb,netdev=n0,bus=rp1",
	"-netdev", "hubport,id=n1,hubid=1", "-device", "pcie-root-port,id=rp2,bus=pcie.0,chassis=2,addr=0x4",
	"-device", "igb,netdev=n1,bus=rp2",
	"-netdev", "hubport,id=n2,hubid=2", "-device", "e1000,netdev=n2,bus=pcie.0,addr=0x5",
}

// suite is what the guest runs by default: a package's tests built with
// the sriov_hw tag, filtered by run.
type suite struct {
	pkg string // relative to the module root
	run string // -test.run
}

var defaultSuites = []suite{
	// nsmfwd's SR-IOV code on the real igb PF and VFs: discovery, pools,
	// KERNEL and VFIO mechanisms, restore read back through netlink,
	// crash-restart, bad input.
	{pkg: "./sriov", run: "Hardware"},
	// The conformance suite on the SR-IOV dataplane with real VFs.
	{pkg: "./test/conformance", run: "SRIOVHardware"},
	// The kernel dataplane's WireGuard tunnels (the guest kernel has
	// wireguard.ko, the host may not).
	{pkg: "./ebpf/kernel", run: "WireGuard"},
}

// TestGuestVM is the guest-VM tier: it builds the suites as static test
// binaries, boots a Debian 6.12 kernel under QEMU (TCG) with an emulated
// igb SR-IOV NIC and an IOMMU, runs them there as root and reports each
// guest test as a subtest. It skips, saying why, when QEMU (with igb) or
// a 6.12 kernel package is not available.
//
// NSMFWD_VM_PACKAGES (space or comma separated) and NSMFWD_VM_TESTRUN
// replace the default suites, for development; NSMFWD_VM_SCRIPT runs a
// shell script in the guest instead.
func TestGuestVM(t *testing.T) {
	if testing.Short() {
		t.Skip("guest-VM tier: skipped in -short mode")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("guest-VM tier needs qemu-system-x86_64: install Debian's qemu-system-x86 from bookworm-backports (QEMU 10, for the igb NIC); .ci/run does")
	}
	if out, err := exec.Command(qemu, "-device", "help").CombinedOutput(); err != nil || !regexp.MustCompile(`name "igb"`).Match(out) {
		t.Skipf("guest-VM tier needs a QEMU with the igb NIC (QEMU >= 8, Debian bookworm-backports): %s has none", qemu)
	}
	timeout := 45 * time.Minute
	if v := os.Getenv("NSMFWD_VM_TIMEOUT"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil {
			t.Fatalf("NSMFWD_VM_TIMEOUT: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tierStart := time.Now()

	cache, err := CacheDir()
	if err != nil {
		t.Fatal(err)
	}
	k, err := PrepareKernel(ctx, cache)
	if errors.Is(err, ErrMissing) {
		t.Skipf("guest-VM tier: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest kernel %s (cache %s)", k.Version, cache)

	suites := defaultSuites
	if v := os.Getenv("NSMFWD_VM_PACKAGES"); v != "" {
		suites = nil
		for _, p := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }) {
			suites = append(suites, suite{pkg: p, run: os.Getenv("NSMFWD_VM_TESTRUN")})
		}
	}
	dir := t.TempDir()
	root := moduleRoot(t)
	im := &Image{
		Kernel: k,
		Init:   filepath.Join(dir, "init"),
		// Drivers of the devices, and what the tests make the kernel
		// load on demand (the guest's modprobe is the init).
		Modules: []string{"igb", "igbvf", "e1000", "vfio-pci", "veth", "wireguard", "vxlan", "8021q",
			// netlink families vishvananda/netlink opens with every handle,
			// and tc's (the SR-IOV stand-in tests' fake switch).
			"xfrm_user", "nfnetlink", "sch_ingress", "cls_u32", "act_mirred",
			// the kernel dataplane's tc attach mode, and its tests' tun.
			"cls_bpf", "tun"},
		Programs: []string{"sh", "ip", "tc", "ping", "unshare", "sleep", "cat", "ls", "ethtool"},
		Files:    map[string]string{},
		Manifest: guest.Manifest{
			Output:  "/dev/ttyS1",
			Modules: []string{"igbvf", "vfio-pci", "veth", "wireguard", "vxlan", "tun"},
			Writes:  []guest.Write{{Path: "/sys/bus/pci/devices/" + pciPF + "/sriov_numvfs", Value: strconv.Itoa(numVFs)}},
			Up:      []string{pciPF},
			Netdevs: map[string]string{
				"NSMFWD_SRIOV_PF":        pciPF,
				"NSMFWD_SRIOV_PF_NOVFS":  pciPFNoVF,
				"NSMFWD_SRIOV_NOT_SRIOV": pciNoSRIOV,
			},
		},
	}
	build := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	build("build", "-o", im.Init, "./test/vm/guestinit")
	for _, s := range suites {
		name := strings.ReplaceAll(strings.Trim(filepath.Clean(s.pkg), "./"), "/", "-")
		bin := filepath.Join(dir, name+".test")
		build("test", "-c", "-tags", "sriov_hw", "-o", bin, s.pkg)
		im.Files["/tests/"+name+".test"] = bin
		args := []string{"-test.v", "-test.count=1", "-test.timeout=30m"}
		if s.run != "" {
			args = append(args, "-test.run="+s.run)
		}
		im.Manifest.Runs = append(im.Manifest.Runs, guest.Run{
			Name: name, Path: "/tests/" + name + ".test", Args: args,
			Env: append([]string{"NSMFWD_SRIOV_VFS=" + strconv.Itoa(numVFs), "NSMFWD_GUEST_VM=1"}, passEnv()...),
		})
	}
	vpp := vppBinary()
	if vpp != "" {
		bin := vpp
		// With a VPP on the host, the VPP dataplane's tap v2 mode, which
		// needs /dev/vhost-net that the host may lack, and WireGuard
		// between a kernel node and a VPP node run in the guest.
		if err := addVPP(im, bin); err != nil {
			t.Fatal(err)
		}
		for i := range im.Manifest.Runs {
			im.Manifest.Runs[i].Env = append(im.Manifest.Runs[i].Env, "VPP_BIN="+bin)
		}
	}
	if bin := vpp; bin != "" && os.Getenv("NSMFWD_VM_PACKAGES") == "" {
		name := "test-conformance-vpp"
		b := filepath.Join(dir, "test-conformance.test")
		im.Manifest.Runs = append(im.Manifest.Runs, guest.Run{
			Name: name, Path: "/tests/test-conformance.test",
			Args: []string{"-test.v", "-test.count=1", "-test.timeout=30m", "-test.run=VPPTap|KernelAndVPP"},
			Env:  append([]string{"VPP_BIN=" + bin, "NSMFWD_GUEST_VM=1"}, passEnv()...),
		})
		if _, ok := im.Files["/tests/test-conformance.test"]; !ok {
			build("test", "-c", "-tags", "sriov_hw", "-o", b, "./test/conformance")
			im.Files["/tests/test-conformance.test"] = b
		}
	}
	if script := os.Getenv("NSMFWD_VM_SCRIPT"); script != "" {
		// For exploring the guest: a shell script instead of the suites.
		// The machine is left as booted: the script does the setup.
		im.Manifest.Runs = []guest.Run{{Name: "script", Path: "/bin/sh", Args: []string{"-c", script}}}
		im.Manifest.Writes, im.Manifest.Up = nil, nil
		im.Manifest.Netdevs = map[string]string{"NSMFWD_SRIOV_PF": pciPF}
	}
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := im.Write(ctx, initrd); err != nil {
		t.Fatal(err)
	}
	m := &Machine{Kernel: k.Vmlinuz(), Initrd: initrd, Console: filepath.Join(dir, "console.log"),
		Devices: devices, MemMiB: 2048, CPUs: 2}
	t.Logf("image built in %v; booting: qemu-system-x86_64 %s", time.Since(tierStart).Round(time.Second), strings.Join(m.Args(), " "))

	// QEMU's multi-threaded TCG has been seen to abort while the guest
	// kernel probes its PCI devices (physmem.c: "iotlb_to_section:
	// Assertion ... failed"). A guest that dies so, before it is ready
	// and before any test ran, is booted once more; anything later is a
	// failure.
	var r *reporter
	for attempt := 1; ; attempt++ {
		var err error
		r, err = boot(ctx, t, m)
		if err == nil {
			break
		}
		if r.ready == 0 && attempt < 2 && ctx.Err() == nil {
			t.Logf("guest died before it was ready (%v), booting again; console (last lines):\n%s", err, ConsoleTail(m.Console, 20))
			continue
		}
		t.Errorf("guest: %v\nconsole (last lines):\n%s", err, ConsoleTail(m.Console, 60))
		break
	}
	if !r.done && !t.Failed() {
		t.Errorf("guest powered off without finishing\nconsole (last lines):\n%s", ConsoleTail(m.Console, 60))
	}
	if os.Getenv("NSMFWD_VM_SCRIPT") != "" {
		t.Logf("console:\n%s", ConsoleTail(m.Console, 150))
	}
	t.Logf("guest-VM tier: guest ready %.1fs after boot began, whole tier %v", r.ready, time.Since(tierStart).Round(time.Second))
}

// vppBinary is the VPP the host's VPP tests use (VPP_BIN, or vpp on
// PATH), "" without one.
func vppBinary() string {
	if b := os.Getenv("VPP_BIN"); b != "" {
		return b
	}
	b, _ := exec.LookPath("vpp")
	return b
}

// vppPlugins are the plugins nsmfwd's startup.conf enables.
var vppPlugins = []string{"af_packet", "af_xdp", "memif", "l3xc", "ping", "vxlan", "wireguard", "acl"}

// addVPP puts the host's VPP into the image: the binary, the plugins
// nsmfwd enables (from VPP's lib/<triplet>/vpp_plugins next to bin/) and
// its crypto engines, their libraries, and the modules its tap v2 needs.
func addVPP(im *Image, bin string) error {
	im.Programs = append(im.Programs, bin)
	root := filepath.Dir(filepath.Dir(bin))
	for _, p := range vppPlugins {
		so, _ := filepath.Glob(filepath.Join(root, "lib*", "*", "vpp_plugins", p+"_plugin.so"))
		if len(so) == 0 {
			so, _ = filepath.Glob(filepath.Join(root, "lib*", "vpp_plugins", p+"_plugin.so"))
		}
		if len(so) == 0 {
			return fmt.Errorf("VPP %s: no %s plugin under %s", bin, p, root)
		}
		im.Programs = append(im.Programs, so[0])
	}
	// VPP 25.10 loads its crypto engines (WireGuard's ChaCha20-Poly1305)
	// from a directory of their own next to the plugins.
	engines, _ := filepath.Glob(filepath.Join(root, "lib*", "*", "vpp_crypto_engines", "*.so"))
	if len(engines) == 0 {
		engines, _ = filepath.Glob(filepath.Join(root, "lib*", "vpp_crypto_engines", "*.so"))
	}
	im.Programs = append(im.Programs, engines...)
	im.Modules = append(im.Modules, "vhost_net")
	im.Manifest.Modules = append(im.Manifest.Modules, "vhost_net")
	return nil
}

// passEnv is the host's settings the guest's tests take too (debug logs).
func passEnv() []string {
	var env []string
	for _, v := range []string{"NSMFWD_TEST_LOG"} {
		if val, ok := os.LookupEnv(v); ok {
			env = append(env, v+"="+val)
		}
	}
	return env
}

// boot runs the guest once, reporting its runs as subtests of t.
func boot(ctx context.Context, t *testing.T, m *Machine) (*reporter, error) {
	events := make(chan string, 1024)
	runErr := make(chan error, 1)
	bootStart := time.Now()
	go func() {
		runErr <- m.Run(ctx, func(l string) {
			if testing.Verbose() {
				fmt.Printf("guest| %s\n", l)
			}
			events <- l
		})
		close(events)
	}()
	r := &reporter{events: events}
	r.report(t, bootStart)
	return r, <-runErr
}

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// reporter turns the guest's output into subtests: one per guest run
// (test binary), with one per top-level test of that binary inside.
type reporter struct {
	events <-chan string
	ready  float64
	done   bool
}

var resultLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)$`)

func (r *reporter) report(t *testing.T, bootStart time.Time) {
	for l := range r.events {
		switch {
		case strings.HasPrefix(l, guest.MarkReady):
			r.ready = time.Since(bootStart).Seconds()
			t.Logf("guest ready after %.1fs (guest kernel uptime %ss)", r.ready, strings.TrimPrefix(l, guest.MarkReady))
		case strings.HasPrefix(l, guest.MarkRun):
			name := strings.TrimPrefix(l, guest.MarkRun)
			t.Run(name, func(t *testing.T) { r.run(t, name) })
		case strings.HasPrefix(l, guest.MarkError):
			t.Errorf("guest init: %s", strings.TrimPrefix(l, guest.MarkError))
		case l == guest.MarkDone:
			r.done = true
		}
	}
}

// run consumes one binary's output up to its exit marker.
func (r *reporter) run(t *testing.T, name string) {
	var buf []string
	results := 0
	for l := range r.events {
		if m := resultLine.FindStringSubmatch(l); m != nil {
			results++
			out := buf
			buf = nil
			t.Run(m[2], func(t *testing.T) {
				t.Log("guest output:\n" + strings.Join(out, "\n") + "\n" + l)
				switch m[1] {
				case "FAIL":
					t.Fail()
				case "SKIP":
					t.SkipNow()
				}
			})
			continue
		}
		if rest, ok := strings.CutPrefix(l, guest.MarkExit); ok {
			rc := rest[strings.LastIndexByte(rest, ' ')+1:]
			if rc != "0" {
				t.Errorf("%s exited with %s:\n%s", name, rc, strings.Join(buf, "\n"))
			} else if results == 0 && name != "script" {
				t.Errorf("%s ran no tests:\n%s", name, strings.Join(buf, "\n"))
			}
			return
		}
		buf = append(buf, l)
	}
	t.Errorf("%s: the guest stopped before it finished:\n%s", name, strings.Join(buf, "\n"))
}
