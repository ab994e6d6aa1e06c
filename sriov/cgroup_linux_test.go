package sriov_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
)

// TestCgroupV1 checks the lines written to devices.allow and devices.deny
// in a cgroup v1 devices hierarchy (a plain tree of files here).
func TestCgroupV1(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "devices", "kubepods", "pod1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{filepath.Join(root, "devices", "devices.allow"), filepath.Join(dir, "devices.allow"), filepath.Join(dir, "devices.deny")} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cg := &sriov.HostCgroups{Root: root}
	ctx := context.Background()
	if err := cg.Allow(ctx, "kubepods/pod1", []sriov.Device{{Major: 10, Minor: 196}, {Major: 243, Minor: 7}}); err != nil {
		t.Fatal(err)
	}
	if err := cg.Revoke(ctx, "/kubepods/pod1", []sriov.Device{{Major: 243, Minor: 7}}, []sriov.Device{{Major: 10, Minor: 196}}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "devices.allow")); got != "c 10:196 rwm\nc 243:7 rwm\n" {
		t.Errorf("devices.allow: %q", got)
	}
	if got := readFile(t, filepath.Join(dir, "devices.deny")); got != "c 243:7 rwm\n" {
		t.Errorf("devices.deny: %q", got)
	}
	if err := cg.Allow(ctx, "kubepods/pod2", []sriov.Device{{Major: 10, Minor: 196}}); err == nil {
		t.Error("Allow on a missing cgroup succeeded")
	}
	if err := cg.Revoke(ctx, "kubepods/gone", []sriov.Device{{Major: 10, Minor: 196}}, nil); err != nil {
		t.Errorf("Revoke on a cgroup that is gone: %v", err)
	}
}

// cgroup2Root returns the node's cgroup v2 mount, or skips.
func cgroup2Root(t *testing.T) (root, v2 string) {
	for _, c := range []struct{ root, v2 string }{{"/sys/fs/cgroup", "/sys/fs/cgroup"}, {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}} {
		var st unix.Statfs_t
		if unix.Statfs(c.v2, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return c.root, c.v2
		}
	}
	t.Skip("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	return "", ""
}

// runtimeProgram stands in for a container runtime's device program: it
// denies char 1:5 (/dev/zero) and allows everything else.
func runtimeProgram(t *testing.T) *ebpf.Program {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "runtime_dev", Type: ebpf.CGroupDevice, AttachType: ebpf.AttachCGroupDevice, License: "Apache-2.0",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
			asm.And.Imm(asm.R2, 0xffff),
			asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
			asm.LoadMem(asm.R4, asm.R1, 8, asm.Word),
			asm.Mov.Imm(asm.R0, 1),
			asm.JNE.Imm(asm.R2, unix.BPF_DEVCG_DEV_CHAR, "out"),
			asm.JNE.Imm(asm.R3, 1, "out"),
			asm.JNE.Imm(asm.R4, 5, "out"),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return().WithSymbol("out"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// canOpenZero runs a process in the cgroup that opens /dev/zero.
func canOpenZero(t *testing.T, cgdir string) bool {
	cmd := exec.Command("sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs && exec head -c 1 /dev/zero > /dev/null", cgdir))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("open /dev/zero in the cgroup: %v: %s", err, out)
	}
	return err == nil
}

func attachedIDs(t *testing.T, cgdir string) []ebpf.ProgramID {
	f, err := os.Open(cgdir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupDevice})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range q.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

// TestCgroupV2DeviceProgram runs the cgroup v2 grant for real on a
// throwaway cgroup: a runtime program denies /dev/zero; Allow lets the
// cgroup open it (the runtime program is replaced by one that allows the
// device and tail-calls the runtime's for the rest), Revoke puts the
// runtime's program back.
func TestCgroupV2DeviceProgram(t *testing.T) {
	nstest.RequireRoot(t)
	root, v2 := cgroup2Root(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	rel := "nsmfwd-test-" + hex.EncodeToString(b[:])
	cgdir := filepath.Join(v2, rel)
	if err := os.Mkdir(cgdir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if err := os.Remove(cgdir); err == nil || time.Now().After(deadline) {
				return
			}
		}
	})
	rt := runtimeProgram(t)
	defer rt.Close()
	f, err := os.Open(cgdir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: int(f.Fd()), Program: rt, Attach: ebpf.AttachCGroupDevice, Flags: unix.BPF_F_ALLOW_MULTI}); err != nil {
		t.Fatal(err)
	}
	rtInfo, err := rt.Info()
	if err != nil {
		t.Fatal(err)
	}
	rtID, _ := rtInfo.ID()
	t.Cleanup(func() {
		_ = link.RawDetachProgram(link.RawDetachProgramOptions{Target: int(f.Fd()), Program: rt, Attach: ebpf.AttachCGroupDevice})
	})
	if canOpenZero(t, cgdir) {
		t.Fatal("the runtime program does not deny /dev/zero")
	}
	pinDir := "/sys/fs/bpf/" + rel
	t.Cleanup(func() {
		if left, _ := filepath.Glob(pinDir + "/*"); len(left) > 0 {
			t.Errorf("pins left behind: %v", left)
		}
		_ = os.RemoveAll(pinDir)
	})
	cg := &sriov.HostCgroups{Root: root, PinDir: pinDir}
	ctx := context.Background()
	zero := sriov.Device{Major: 1, Minor: 5}
	for i, devs := range [][]sriov.Device{{zero}, {{Major: 10, Minor: 196}, zero}} {
		if err := cg.Allow(ctx, rel, devs); err != nil {
			t.Fatalf("Allow #%d: %v", i+1, err)
		}
		ids := attachedIDs(t, cgdir)
		if len(ids) != 1 || ids[0] == rtID {
			t.Fatalf("after Allow #%d: attached %v (runtime %d), want one program of ours", i+1, ids, rtID)
		}
		if !canOpenZero(t, cgdir) {
			t.Fatalf("after Allow #%d: /dev/zero still denied", i+1)
		}
	}
	if err := cg.Revoke(ctx, rel, []sriov.Device{zero}, []sriov.Device{{Major: 10, Minor: 196}}); err != nil {
		t.Fatal(err)
	}
	if canOpenZero(t, cgdir) {
		t.Fatal("after revoking /dev/zero: still allowed")
	}
	if err := cg.Revoke(ctx, rel, []sriov.Device{{Major: 10, Minor: 196}}, nil); err != nil {
		t.Fatal(err)
	}
	if ids := attachedIDs(t, cgdir); len(ids) != 1 || ids[0] != rtID {
		t.Fatalf("after the last Revoke: attached %v, want the runtime's %d back", ids, rtID)
	}
	if canOpenZero(t, cgdir) {
		t.Fatal("after Revoke: /dev/zero allowed")
	}
}
