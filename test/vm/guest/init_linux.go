package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Main is the guest's init (PID 1). Invoked as modprobe (the kernel's
// usermode helper for module autoloading), it loads a module instead.
func Main() {
	if filepath.Base(os.Args[0]) == "modprobe" {
		os.Exit(modprobeMain(os.Args[1:]))
	}
	out, err := initMain()
	if err != nil {
		w := io.Writer(os.Stderr)
		if out != nil {
			w = out
		}
		fmt.Fprintf(w, "\n%s%v\n", MarkError, err)
	}
	if out != nil {
		fmt.Fprintf(out, "\n%s\n", MarkDone)
		_ = out.Sync()
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {} // PID 1 must not exit
}

func initMain() (*os.File, error) {
	if err := mountAll(); err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(ManifestPath)
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	out, err := openOutput(m.Output)
	if err != nil {
		return nil, err
	}
	mods, err := loadModuleIndex()
	if err != nil {
		return out, err
	}
	// Coldplug: the drivers of the PCI devices present (no udev here).
	if err := mods.coldplug(); err != nil {
		return out, err
	}
	for _, name := range m.Modules {
		if err := mods.load(name); err != nil {
			return out, err
		}
	}
	for _, pci := range m.Up {
		name, err := netdevOf(pci)
		if err != nil {
			return out, err
		}
		if err := linkUp(name); err != nil {
			return out, err
		}
		if err := waitCarrier(name, 30*time.Second); err != nil {
			return out, err
		}
	}
	for _, w := range m.Writes {
		if err := os.WriteFile(w.Path, []byte(w.Value), 0o644); err != nil { //nolint:gosec // sysfs knobs
			return out, fmt.Errorf("write %q to %s: %w", w.Value, w.Path, err)
		}
	}
	env := append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TMPDIR=/tmp")
	for v, pci := range m.Netdevs {
		name, err := netdevOf(pci)
		if err != nil {
			return out, fmt.Errorf("%s: %w", v, err)
		}
		env = append(env, v+"="+name)
	}
	if err := linkUp("lo"); err != nil {
		return out, err
	}
	fmt.Fprintf(out, "%s%.1f\n", MarkReady, uptime())
	for _, r := range m.Runs {
		fmt.Fprintf(out, "%s%s\n", MarkRun, r.Name)
		cmd := exec.Command(r.Path, r.Args...)
		cmd.Env = append(append([]string(nil), env...), r.Env...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Dir = "/tmp"
		rc := 0
		if err := cmd.Run(); err != nil {
			rc = -1
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				rc = ee.ExitCode()
			} else {
				fmt.Fprintf(out, "run %s: %v\n", r.Name, err)
			}
		}
		fmt.Fprintf(out, "\n%s%s %d\n", MarkExit, r.Name, rc)
	}
	return out, nil
}

func mountAll() error {
	for _, m := range []struct{ src, dst, typ, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"tmpfs", "/dev/shm", "tmpfs", "mode=1777"},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
		{"bpf", "/sys/fs/bpf", "bpf", ""},
		{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil { //nolint:gosec // the guest's /proc, /sys, /tmp…: world-readable as on any system
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.typ, 0, m.data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.typ, m.dst, err)
		}
	}
	// The cgroup v2 root hands the device controller to its children so
	// tests can make client cgroups (the VFIO device program's home).
	_ = os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu +memory +pids"), 0o644) //nolint:gosec // cgroupfs
	return nil
}

// openOutput opens the serial port the host reads, without output
// processing so the runs' lines cross unchanged.
func openOutput(dev string) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_NOCTTY, 0) //nolint:gosec // the serial port the manifest names
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		t.Oflag &^= unix.OPOST
		_ = unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
	}
	return f, nil
}

func netdevOf(pci string) (string, error) {
	ents, err := os.ReadDir(filepath.Join("/sys/bus/pci/devices", pci, "net"))
	if err != nil {
		return "", fmt.Errorf("netdev of %s: %w", pci, err)
	}
	if len(ents) != 1 {
		return "", fmt.Errorf("netdev of %s: %d netdevs", pci, len(ents))
	}
	return ents[0].Name(), nil
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// waitCarrier waits for the link's carrier: a PF's VFs have none before
// their PF does.
func waitCarrier(name string, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		raw, _ := os.ReadFile(filepath.Join("/sys/class/net", name, "carrier")) //nolint:gosec // sysfs
		if strings.TrimSpace(string(raw)) == "1" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no carrier after %v", name, timeout)
		}
	}
}

func uptime() float64 {
	raw, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var up float64
	_, _ = fmt.Sscanf(string(raw), "%f", &up)
	return up
}

// moduleIndex is what depmod wrote for the image's modules.
type moduleIndex struct {
	dir     string
	deps    map[string][]string // module name -> its file, then its dependencies' files
	aliases [][2]string         // pattern, module name
}

func loadModuleIndex() (*moduleIndex, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, err
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	idx := &moduleIndex{dir: dir, deps: map[string][]string{}}
	if err := ReadLines(filepath.Join(dir, "modules.dep"), func(line string) {
		file, deps, ok := strings.Cut(line, ":")
		if !ok {
			return
		}
		idx.deps[ModName(file)] = append([]string{file}, strings.Fields(deps)...)
	}); err != nil {
		return nil, err
	}
	if err := ReadLines(filepath.Join(dir, "modules.alias"), func(line string) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" {
			idx.aliases = append(idx.aliases, [2]string{f[1], f[2]})
		}
	}); err != nil {
		return nil, err
	}
	return idx, nil
}

// resolve maps a module name or alias to module names.
func (idx *moduleIndex) resolve(name string) []string {
	n := strings.ReplaceAll(name, "-", "_")
	if _, ok := idx.deps[n]; ok {
		return []string{n}
	}
	var mods []string
	for _, a := range idx.aliases {
		if ok, _ := filepath.Match(a[0], name); ok {
			mods = append(mods, strings.ReplaceAll(a[1], "-", "_"))
		}
	}
	return mods
}

// load loads a module (or every module an alias names) after its
// dependencies. A module not in the image is an error.
func (idx *moduleIndex) load(name string) error {
	mods := idx.resolve(name)
	if len(mods) == 0 {
		return fmt.Errorf("module %s: not in the image", name)
	}
	for _, m := range mods {
		files := idx.deps[m]
		if len(files) == 0 {
			continue // builtin
		}
		// modules.dep lists a module's dependencies so that the last
		// must be loaded first.
		for i := len(files) - 1; i >= 1; i-- {
			if err := idx.insmod(files[i]); err != nil {
				return fmt.Errorf("module %s: dependency: %w", m, err)
			}
		}
		if err := idx.insmod(files[0]); err != nil {
			return fmt.Errorf("module %s: %w", m, err)
		}
	}
	return nil
}

func (idx *moduleIndex) insmod(file string) error {
	f, err := os.Open(filepath.Join(idx.dir, file)) //nolint:gosec // a module of the image's own index
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if strings.HasSuffix(file, ".xz") || strings.HasSuffix(file, ".zst") || strings.HasSuffix(file, ".gz") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	for range 50 {
		err = unix.FinitModule(int(f.Fd()), "", flags)
		if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EAGAIN) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load %s: %w", file, err)
	}
	return nil
}

func (idx *moduleIndex) present(file string) bool {
	_, err := os.Stat(filepath.Join(idx.dir, file))
	return err == nil
}

// coldplug loads the drivers of the PCI devices present, as udev would.
func (idx *moduleIndex) coldplug() error {
	devs, err := filepath.Glob("/sys/bus/pci/devices/*/modalias")
	if err != nil {
		return err
	}
	for _, p := range devs {
		raw, err := os.ReadFile(p) //nolint:gosec // sysfs
		if err != nil {
			return err
		}
		for _, m := range idx.resolve(strings.TrimSpace(string(raw))) {
			if files := idx.deps[m]; len(files) > 0 && !idx.present(files[0]) {
				continue // a driver the image leaves out
			}
			if err := idx.load(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// modprobeMain is what the kernel runs to autoload a module:
// modprobe -q -- <name or alias>.
func modprobeMain(args []string) int {
	var names []string
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			names = append(names, a)
		}
	}
	// The kernel gives its helper no stdio: complain in the kernel log,
	// which is the guest's console.
	var log io.Writer = os.Stderr
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		defer f.Close()
		log = f
	}
	idx, err := loadModuleIndex()
	if err != nil {
		fmt.Fprintln(log, "modprobe:", err)
		return 1
	}
	rc := 0
	for _, n := range names {
		if err := idx.load(n); err != nil {
			fmt.Fprintln(log, "modprobe:", err)
			rc = 1
		}
	}
	return rc
}
