// Package nstest holds helpers for privileged tests: throwaway network
// namespaces, their links, and the machine's loaded BPF programs.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace New creates.
const Prefix = "nsmfwd-test-"

// RequireRoot skips t, saying why, unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root (network namespaces, veth, BPF)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("privileged test: needs iproute2's ip command")
	}
}

// New creates a named network namespace with its loopback up and returns
// its name and path. It is deleted when the test ends, whatever the outcome.
func New(t testing.TB) (name, path string) {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name = Prefix + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/run/netns", name)); errors.Is(err, os.ErrNotExist) {
			return // the test deleted it itself
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set lo up: %v: %s", name, err, out)
	}
	return name, filepath.Join("/run/netns", name)
}

// Delete deletes the named namespace now (New's cleanup then has nothing to
// do), for tests of a namespace that goes away.
func Delete(t testing.TB, name string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", name, err, out)
	}
}

// Links returns the names of the links in the namespace at path.
func Links(t testing.TB, path string) []string {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", path, err)
	}
	defer h.Close()
	var links []netlink.Link
	for range 5 {
		links, err = h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		t.Fatalf("list links in %s: %v", path, err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// BPFProgIDs returns the ids of every BPF program loaded on the machine.
func BPFProgIDs(t testing.TB) []uint32 {
	t.Helper()
	var ids []uint32
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			t.Fatalf("BPF program ids: %v", err)
		}
		ids = append(ids, uint32(next))
		id = next
	}
	return ids
}

// Exec runs args inside the named namespace with ip netns exec (in the
// caller's namespace when nsName is empty) and returns its combined output.
func Exec(t testing.TB, nsName string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName}, args...)...)
	if nsName == "" {
		cmd = exec.Command(args[0], args[1:]...)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
