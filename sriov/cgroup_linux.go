package sriov

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// DefaultCgroupRoot is where the cgroup hierarchies are mounted.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// Device is a character device, by number.
type Device struct {
	Major, Minor uint32
}

func (d Device) String() string { return fmt.Sprintf("c %d:%d", d.Major, d.Minor) }

// DeviceCgroups lets a client's cgroup open the VFIO devices it is given.
type DeviceCgroups interface {
	// Allow makes the cgroup at dir (relative to the hierarchy's root)
	// able to open every device in all, which is the full set the
	// forwarder grants it (earlier grants included).
	Allow(ctx context.Context, dir string, all []Device) error
	// Revoke withdraws removed and keeps remaining (the grants still held
	// by other connections of the same cgroup).
	Revoke(ctx context.Context, dir string, removed, remaining []Device) error
}

// HostCgroups implements DeviceCgroups on the node's cgroup mounts:
//
//   - cgroup v1: "c MAJ:MIN rwm" written to devices.allow (devices.deny to
//     revoke) in <Root>/devices/<dir>;
//   - cgroup v2 (<Root>, or <Root>/unified on a hybrid node): device access
//     is decided by the BPF_CGROUP_DEVICE programs attached to the cgroup,
//     all of which must allow. The container runtime's program denies what
//     it does not list, so adding a program cannot grant anything; the
//     runtime's program is replaced (BPF_F_REPLACE, atomically) by one
//     that allows the granted devices and otherwise tail-calls the
//     runtime's program, which keeps deciding everything else. Revoking
//     puts the runtime's program back. The replaced program is held by the
//     tail-call map of ours, which is pinned under PinDir (the kernel
//     empties a program array when no file or pin refers to it any more),
//     so all of it survives a forwarder restart; ours is recognised by its
//     name.
//
// On a hybrid node both apply and both are updated.
type HostCgroups struct {
	// Root is where the hierarchies are mounted (DefaultCgroupRoot).
	Root string
	// PinDir is a bpffs directory for the tail-call maps of the cgroup v2
	// device programs (DefaultCgroupPinDir).
	PinDir string
}

// DefaultCgroupPinDir is where HostCgroups pins its maps by default.
const DefaultCgroupPinDir = "/sys/fs/bpf/nsmfwd-sriov"

var _ DeviceCgroups = (*HostCgroups)(nil)

// devProgName names the device programs HostCgroups installs.
const devProgName = "nsmfwd_vfio"

func (c *HostCgroups) roots() (v2, v1 string) {
	if isCgroup2(c.Root) {
		return c.Root, ""
	}
	if u := filepath.Join(c.Root, "unified"); isCgroup2(u) {
		v2 = u
	}
	if st, err := os.Stat(filepath.Join(c.Root, "devices", "devices.allow")); err == nil && !st.IsDir() {
		v1 = filepath.Join(c.Root, "devices")
	}
	return v2, v1
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

func join(root, dir string) string { return filepath.Join(root, filepath.Clean("/"+dir)) }

// Allow implements DeviceCgroups.
func (c *HostCgroups) Allow(_ context.Context, dir string, all []Device) error {
	v2, v1 := c.roots()
	found := false
	var errs []error
	if v1 != "" {
		if p := join(v1, dir); exists(p) {
			found = true
			for _, d := range all {
				errs = append(errs, writeCgroup(p, "devices.allow", d))
			}
		}
	}
	if v2 != "" {
		if p := join(v2, dir); exists(p) {
			found = true
			errs = append(errs, c.updateDeviceProgs(p, all))
		}
	}
	if !found {
		return forwarder.Errorf(forwarder.CodeNotFound, "", "cgroup %q not found under %s", dir, c.Root)
	}
	return errors.Join(errs...)
}

// Revoke implements DeviceCgroups. A cgroup that is gone (its pod ended)
// has nothing left to revoke.
func (c *HostCgroups) Revoke(_ context.Context, dir string, removed, remaining []Device) error {
	v2, v1 := c.roots()
	var errs []error
	if v1 != "" {
		if p := join(v1, dir); exists(p) {
			for _, d := range removed {
				errs = append(errs, writeCgroup(p, "devices.deny", d))
			}
		}
	}
	if v2 != "" {
		if p := join(v2, dir); exists(p) {
			errs = append(errs, c.updateDeviceProgs(p, remaining))
		}
	}
	return errors.Join(errs...)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func writeCgroup(dir, file string, d Device) error {
	f, err := os.OpenFile(filepath.Join(dir, file), os.O_WRONLY|os.O_APPEND, 0) //nolint:gosec // G304: a cgroup control file under the configured cgroup root
	if errors.Is(err, fs.ErrNotExist) {
		return nil // the cgroup went away with its pod
	}
	if err == nil {
		_, err = f.WriteString(d.String() + " rwm\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("cgroup %s %s %s: %w", dir, file, d, err)
	}
	return nil
}

// updateDeviceProgs makes every device program attached to the cgroup at
// dir allow devs on top of what its runtime program allows (devs empty:
// the runtime program alone). A cgroup without device programs restricts
// nothing and is left alone.
func (c *HostCgroups) updateDeviceProgs(dir string, devs []Device) error {
	f, err := os.Open(dir) //nolint:gosec // G304: a cgroup directory under the configured cgroup root
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	q, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupDevice})
	if err != nil {
		return fmt.Errorf("cgroup %s: query device programs: %w", dir, err)
	}
	pinDir := c.PinDir
	if pinDir == "" {
		pinDir = DefaultCgroupPinDir
	}
	var errs []error
	var keep []string
	for i, ap := range q.Programs {
		pin := filepath.Join(pinDir, fmt.Sprintf("dev-%d-%d", st.Ino, i))
		kept, err := updateDeviceProg(int(f.Fd()), ap.ID, devs, pin)
		errs = append(errs, err)
		keep = append(keep, kept)
	}
	// Maps of programs no longer attached: unpinned, they go with them.
	old, _ := filepath.Glob(filepath.Join(pinDir, fmt.Sprintf("dev-%d-[0-9]*", st.Ino)))
	for _, p := range old {
		if !slices.Contains(keep, p) {
			_ = os.Remove(p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return nil
}

// updateDeviceProg replaces one attached program and returns the pin path
// of the tail-call map now in use ("" when none is).
func updateDeviceProg(cgFD int, id ebpf.ProgramID, devs []Device, pin string) (string, error) {
	attached, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return "", fmt.Errorf("device program %d: %w", id, err)
	}
	defer attached.Close()
	info, err := attached.Info()
	if err != nil {
		return "", fmt.Errorf("device program %d: %w", id, err)
	}
	runtime := attached
	if info.Name == devProgName {
		inner, err := wrappedProgram(info)
		if err != nil {
			return pin, err
		}
		defer inner.Close()
		runtime = inner
	} else if len(devs) == 0 {
		return "", nil // not ours and nothing to grant
	}
	if len(devs) == 0 {
		return "", replaceCgroupProg(cgFD, runtime, attached)
	}
	// The new map is pinned beside the old one, and takes its name once
	// the program using it is attached.
	tmp := pin + "-new" // bpffs refuses names with a dot
	p, err := deviceProgram(devs, runtime, tmp)
	if err != nil {
		return pin, err
	}
	defer p.Close()
	if err := replaceCgroupProg(cgFD, p, attached); err != nil {
		_ = os.Remove(tmp)
		return pin, err
	}
	if err := os.Rename(tmp, pin); err != nil {
		return pin, fmt.Errorf("device program map pin: %w", err)
	}
	return pin, nil
}

// wrappedProgram returns the runtime program one of ours tail-calls.
func wrappedProgram(info *ebpf.ProgramInfo) (*ebpf.Program, error) {
	ids, ok := info.MapIDs()
	if !ok || len(ids) != 1 {
		return nil, fmt.Errorf("device program %s: want one map, have %v", info.Name, ids)
	}
	m, err := ebpf.NewMapFromID(ids[0])
	if err != nil {
		return nil, fmt.Errorf("device program map: %w", err)
	}
	defer m.Close()
	var progID uint32
	if err := m.Lookup(uint32(0), &progID); err != nil {
		return nil, fmt.Errorf("device program map: %w", err)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(progID))
	if err != nil {
		return nil, fmt.Errorf("wrapped device program %d: %w", progID, err)
	}
	return p, nil
}

// deviceProgram builds a device program that allows devs (any access) and
// hands every other decision to next by tail call.
func deviceProgram(devs []Device, next *ebpf.Program, pin string) (*ebpf.Program, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "nsmfwd_vfio_nx", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("device program map: %w", err)
	}
	defer m.Close() // the program and the pin hold it
	if err := m.Put(uint32(0), uint32(next.FD())); err != nil {
		return nil, fmt.Errorf("device program map: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
		return nil, fmt.Errorf("device program map: %w", err)
	}
	_ = os.Remove(pin)
	if err := m.Pin(pin); err != nil {
		return nil, fmt.Errorf("device program map: pin: %w", err)
	}
	// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
	// access_type: device type in the low 16 bits, access in the high.
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.And.Imm(asm.R2, 0xffff),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
		asm.LoadMem(asm.R4, asm.R1, 8, asm.Word),
		asm.JNE.Imm(asm.R2, unix.BPF_DEVCG_DEV_CHAR, "next"),
	}
	for i, d := range devs {
		skip := fmt.Sprintf("dev%d", i+1)
		if i == len(devs)-1 {
			skip = "next"
		}
		first := asm.JNE.Imm(asm.R3, int32(d.Major), skip)
		if i > 0 {
			first = first.WithSymbol(fmt.Sprintf("dev%d", i))
		}
		insns = append(insns,
			first,
			asm.JNE.Imm(asm.R4, int32(d.Minor), skip),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		)
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("next"),
		asm.LoadMapPtr(asm.R2, m.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		// Only reached if the runtime program is gone from the map: deny,
		// as it would have for anything it did not list.
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: devProgName, Type: ebpf.CGroupDevice, AttachType: ebpf.AttachCGroupDevice,
		Instructions: insns, License: "Apache-2.0",
	})
	if err != nil {
		_ = m.Unpin()
		return nil, fmt.Errorf("device program: %w", err)
	}
	return p, nil
}

// replaceCgroupProg swaps old for p on the cgroup in one BPF_PROG_ATTACH
// (BPF_F_REPLACE), so the cgroup is never without a device program. A
// runtime program attached without BPF_F_ALLOW_MULTI is replaced by
// attaching with the same flags.
func replaceCgroupProg(cgFD int, p, old *ebpf.Program) error {
	if p.FD() == old.FD() {
		return nil
	}
	err := progAttach(cgFD, p.FD(), old.FD(), unix.BPF_F_ALLOW_MULTI|unix.BPF_F_REPLACE)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL) {
		for _, flags := range []uint32{0, unix.BPF_F_ALLOW_OVERRIDE} {
			if err = progAttach(cgFD, p.FD(), 0, flags); err == nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("replace device program: %w", err)
	}
	return nil
}

// progAttachAttr is the BPF_PROG_ATTACH part of union bpf_attr.
type progAttachAttr struct {
	targetFD     uint32
	attachBPFFD  uint32
	attachType   uint32
	attachFlags  uint32
	replaceBPFFD uint32
}

// progAttach is BPF_PROG_ATTACH with replace_bpf_fd, which cilium/ebpf's
// link.RawAttachProgram does not set together with BPF_F_REPLACE.
func progAttach(target, prog, replace int, flags uint32) error {
	attr := progAttachAttr{
		targetFD: uint32(target), attachBPFFD: uint32(prog), attachType: uint32(ebpf.AttachCGroupDevice),
		attachFlags: flags, replaceBPFFD: uint32(replace),
	}
	//nolint:gosec // G103: the bpf(2) syscall takes a pointer to its attribute union
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_ATTACH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	return nil
}
