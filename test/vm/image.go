package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/nsmfwd/nsmfwd/test/vm/guest"
)

// ErrMissing says a tool or package the tier needs is not on this machine.
var ErrMissing = errors.New("guest-VM tier prerequisite missing")

// CacheDir is where the tier keeps the guest kernel package and what it
// extracts from it, outside the repository: NSMFWD_VM_CACHE, or the user's
// cache directory.
func CacheDir() (string, error) {
	if d := os.Getenv("NSMFWD_VM_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "nsmfwd-vm"), nil
}

// Kernel is a Debian kernel package unpacked for the guest.
type Kernel struct {
	Version string // uname -r in the guest
	Dir     string // the package's tree: boot/, lib/modules/
}

// Vmlinuz is the kernel image.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Version) }

// ModulesDir is the kernel's module tree.
func (k *Kernel) ModulesDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Version) }

// kernelPackage matches the plain amd64 image packages of Debian's 6.12
// kernels (bookworm-backports), not the cloud, rt or unsigned flavours.
var kernelPackage = regexp.MustCompile(`^linux-image-(6\.12\.([0-9]+)\+deb[0-9]+-amd64)$`)

// PrepareKernel finds the guest kernel's package (NSMFWD_VM_KERNEL_DEB, a
// package already in the cache, or the newest 6.12 package apt knows of,
// downloaded with apt-get download), unpacks it into the cache and
// indexes its modules with depmod. It returns an error wrapping
// ErrMissing when there is no such package or tool.
func PrepareKernel(ctx context.Context, cache string) (*Kernel, error) {
	for _, tool := range []string{"dpkg-deb", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s (Debian packages dpkg and kmod)", ErrMissing, tool)
		}
	}
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o750); err != nil {
		return nil, err
	}
	deb := os.Getenv("NSMFWD_VM_KERNEL_DEB")
	if deb == "" {
		var err error
		if deb, err = cachedOrDownload(ctx, debs); err != nil {
			return nil, err
		}
	}
	out, err := exec.CommandContext(ctx, "dpkg-deb", "-f", deb, "Package").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-deb -f %s: %w", deb, err)
	}
	pkg := strings.TrimSpace(string(out))
	ver := strings.TrimPrefix(pkg, "linux-image-")
	ver = strings.TrimSuffix(ver, "-unsigned")
	k := &Kernel{Version: ver, Dir: filepath.Join(cache, "kernel", ver)}
	done := filepath.Join(k.Dir, ".unpacked")
	if _, err := os.Stat(done); err == nil {
		return k, nil
	}
	if err := os.RemoveAll(k.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(k.Dir, 0o750); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, k.Dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, out)
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", k.Dir, ver).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod %s: %w: %s", ver, err, out)
	}
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil, fmt.Errorf("package %s has no kernel image: %w", pkg, err)
	}
	return k, os.WriteFile(done, nil, 0o644) //nolint:gosec // a marker in the cache
}

func cachedOrDownload(ctx context.Context, debs string) (string, error) {
	pkgVer := func(s string) int {
		m := kernelPackage.FindStringSubmatch(s)
		if m == nil {
			return -1
		}
		n, _ := strconv.Atoi(m[2])
		return n
	}
	cached, _ := filepath.Glob(filepath.Join(debs, "linux-image-6.12.*_amd64.deb"))
	pkgOf := func(p string) string { b, _, _ := strings.Cut(filepath.Base(p), "_"); return b }
	cached = slices.DeleteFunc(cached, func(p string) bool { return pkgVer(pkgOf(p)) < 0 })
	if len(cached) > 0 {
		slices.SortFunc(cached, func(a, b string) int { return pkgVer(pkgOf(a)) - pkgVer(pkgOf(b)) })
		return cached[len(cached)-1], nil
	}
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return "", fmt.Errorf("%w: no guest kernel package in %s and no apt to fetch one", ErrMissing, debs)
	}
	out, err := exec.CommandContext(ctx, "apt-cache", "pkgnames", "linux-image-6.12.").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache pkgnames: %w", err)
	}
	var pkgs []string
	s := bufio.NewScanner(strings.NewReader(string(out)))
	for s.Scan() {
		if pkgVer(s.Text()) >= 0 {
			pkgs = append(pkgs, s.Text())
		}
	}
	if len(pkgs) == 0 {
		return "", fmt.Errorf("%w: apt knows no linux-image-6.12.*-amd64 package (add bookworm-backports to the Debian source, as .ci/run does)", ErrMissing)
	}
	slices.SortFunc(pkgs, func(a, b string) int { return pkgVer(a) - pkgVer(b) })
	pkg := pkgs[len(pkgs)-1]
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", pkg)
	cmd.Dir = debs
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: apt-get download %s: %w: %s", ErrMissing, pkg, err, out)
	}
	got, _ := filepath.Glob(filepath.Join(debs, pkg+"_*_amd64.deb"))
	if len(got) == 0 {
		return "", fmt.Errorf("apt-get download %s: no .deb in %s", pkg, debs)
	}
	return got[0], nil
}

// addModules puts the named modules and everything they depend on into
// the image, with depmod's index (which the guest's modprobe reads).
func addModules(r *initramfs, k *Kernel, names []string) error {
	dir := k.ModulesDir()
	deps := map[string][]string{}
	if err := guest.ReadLines(filepath.Join(dir, "modules.dep"), func(line string) {
		file, rest, ok := strings.Cut(line, ":")
		if ok {
			deps[guest.ModName(file)] = append([]string{file}, strings.Fields(rest)...)
		}
	}); err != nil {
		return err
	}
	guestDir := "/lib/modules/" + k.Version
	for _, idx := range []string{"modules.dep", "modules.alias", "modules.builtin", "modules.order"} {
		r.file(guestDir+"/"+idx, filepath.Join(dir, idx), 0o644)
	}
	for _, n := range names {
		files, ok := deps[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			return fmt.Errorf("module %s: not in kernel %s", n, k.Version)
		}
		for _, f := range files {
			r.file(guestDir+"/"+f, filepath.Join(dir, f), 0o644)
		}
	}
	return nil
}

// ldLine matches the library paths in ldd's output.
var ldLine = regexp.MustCompile(`(?:=> )?(/\S+) \(0x`)

// addProgram puts the host's program (from a Debian package: iproute2,
// iputils-ping, util-linux, coreutils) into the image with the shared
// libraries it needs, at the same paths.
func addProgram(ctx context.Context, r *initramfs, name string) error {
	p, err := exec.LookPath(name)
	if err != nil && !filepath.IsAbs(name) {
		return fmt.Errorf("%w: %s", ErrMissing, name)
	}
	if filepath.IsAbs(name) {
		// A file given by its path (a VPP plugin, say) stays at that
		// path, so that what finds it relative to itself still does.
		p = name
		r.file(p, p, 0o755)
	} else {
		if p, err = filepath.EvalSymlinks(p); err != nil {
			return err
		}
		r.file(p, p, 0o755)
		if dst := "/usr/bin/" + name; dst != p {
			r.symlink(dst, p)
		}
	}
	out, err := exec.CommandContext(ctx, "ldd", p).Output()
	if err != nil {
		return nil //nolint:nilerr // static programs: ldd fails, nothing to add
	}
	for _, m := range ldLine.FindAllStringSubmatch(string(out), -1) {
		r.file(m[1], m[1], 0o755)
	}
	return nil
}

// Image describes a guest's initramfs.
type Image struct {
	Kernel   *Kernel
	Init     string            // the guestinit binary (static)
	Modules  []string          // kernel modules to include, with their dependencies
	Programs []string          // host programs to include, with their libraries
	Files    map[string]string // guest path -> host file (test binaries), executable
	Manifest guest.Manifest
}

// Write writes the initramfs to path.
func (im *Image) Write(ctx context.Context, path string) error {
	r := newInitramfs()
	r.file("/init", im.Init, 0o755)
	// The kernel's module autoloader runs /sbin/modprobe: the init again.
	r.symlink("/sbin/modprobe", "/init")
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/etc", "/var/run"} {
		r.bytes(d+"/.keep", nil, 0o644)
	}
	r.bytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	r.bytes("/etc/group", []byte("root:x:0:\n"), 0o644)
	if err := addModules(r, im.Kernel, im.Modules); err != nil {
		return err
	}
	for _, p := range im.Programs {
		if err := addProgram(ctx, r, p); err != nil {
			return err
		}
	}
	for dst, src := range im.Files {
		r.file(dst, src, 0o755)
	}
	raw, err := json.MarshalIndent(im.Manifest, "", "  ")
	if err != nil {
		return err
	}
	r.bytes(guest.ManifestPath, raw, 0o644)
	f, err := os.Create(path) //nolint:gosec // a file in the test's temp dir
	if err != nil {
		return err
	}
	if err := r.write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
