package netns_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
	inetns "github.com/nsmfwd/nsmfwd/internal/netns"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestResolveErrors(t *testing.T) {
	nstest.RequireRoot(t)
	for _, tc := range []struct {
		ref  forwarder.NetNSRef
		code forwarder.Code
	}{
		{forwarder.NetNSRef{Path: "/nonexistent/netns"}, forwarder.CodeNotFound},
		{forwarder.NetNSRef{Path: "/proc/999999/ns/net"}, forwarder.CodeNotFound},
		{forwarder.NetNSRef{Path: "/etc/passwd"}, forwarder.CodeInvalidArgument},
		{forwarder.NetNSRef{Path: "/proc/self/ns/mnt"}, forwarder.CodeInvalidArgument},
		{forwarder.NetNSRef{Path: "/proc/self/ns/uts"}, forwarder.CodeInvalidArgument},
		{forwarder.NetNSRef{Dev: 1, Ino: 12345}, forwarder.CodeNotFound},
	} {
		t.Run(tc.ref.String(), func(t *testing.T) {
			h, err := inetns.Resolve(tc.ref)
			if err == nil {
				h.Close()
				t.Fatal("Resolve succeeded")
			}
			if got := forwarder.CodeOf(err); got != tc.code {
				t.Fatalf("code %v, want %v (%v)", got, tc.code, err)
			}
		})
	}
}

func TestResolvePathAndInode(t *testing.T) {
	nstest.RequireRoot(t)
	_, path := nstest.New(t)
	byPath, err := inetns.Resolve(forwarder.NetNSRef{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer byPath.Close()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	raw := fmt.Sprintf("inode://%d/%d", st.Dev, st.Ino)
	ref, err := forwarder.ParseNetNSURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second lookup is a cache hit
		byIno, err := inetns.Resolve(ref)
		if err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
		same, err := inetns.Same(byPath, byIno)
		byIno.Close()
		if err != nil || !same {
			t.Fatalf("lookup %d: inode and path resolve to different namespaces (%v)", i, err)
		}
	}
	u, err := inetns.InodeURL(byPath)
	if err != nil || u != raw {
		t.Fatalf("InodeURL = %q, %v; want %q", u, err, raw)
	}
	// The process's own namespace is found through /proc.
	self, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()
	u, _ = inetns.InodeURL(self)
	ref, _ = forwarder.ParseNetNSURL(u)
	h, err := inetns.Resolve(ref)
	if err != nil {
		t.Fatalf("resolve own namespace %s: %v", u, err)
	}
	h.Close()
}

func TestDo(t *testing.T) {
	nstest.RequireRoot(t)
	_, path := nstest.New(t)
	target, err := inetns.Resolve(forwarder.NetNSRef{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	errBoom := errors.New("boom")
	err = inetns.Do(target, func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if same, _ := inetns.Same(cur, target); !same {
			return errors.New("fn did not run in the target namespace")
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Do = %v, want fn's error", err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if same, _ := inetns.Same(before, after); !same {
		t.Fatal("the caller's thread changed namespace")
	}
	if err := inetns.Do(netns.None(), func() error { return nil }); err == nil {
		t.Fatal("Do with a closed handle succeeded")
	}
}

// newUnmountedNetNS creates a network namespace that no mount and no
// process is in: only the returned handle holds it.
func newUnmountedNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	done := make(chan netns.NsHandle)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			done <- netns.None()
			return
		}
		h, err := netns.New() // moves this thread into the new namespace
		if err != nil {
			t.Error(err)
			done <- netns.None()
			return
		}
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			t.Error(err)
			done <- h
			return
		}
		_ = orig.Close()
		runtime.UnlockOSThread()
		done <- h
	}()
	h := <-done
	if !h.IsOpen() {
		t.FailNow()
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// An inode reference to a namespace held only by an open descriptor (no
// /run/netns mount, no process or thread inside) resolves through the
// descriptor scan.
func TestResolveInodeHeldOnlyByFD(t *testing.T) {
	nstest.RequireRoot(t)
	h := newUnmountedNetNS(t)
	url, err := inetns.InodeURL(h)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := forwarder.ParseNetNSURL(url)
	if err != nil {
		t.Fatal(err)
	}
	got, err := inetns.Resolve(ref)
	if err != nil {
		t.Fatalf("Resolve(%s): %v", url, err)
	}
	defer got.Close()
	if same, err := inetns.Same(got, h); err != nil || !same {
		t.Fatalf("Resolve(%s) opened another namespace (same=%v, err=%v)", url, same, err)
	}
}
