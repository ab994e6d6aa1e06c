package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Resolve opens the network namespace that ref names. The caller closes the
// handle. A missing path or inode is an *forwarder.Error with CodeNotFound; a
// file that is not a network namespace is CodeInvalidArgument. The error's
// Field is empty: the caller knows which request field it read ref from.
func Resolve(ref forwarder.NetNSRef) (netns.NsHandle, error) {
	if ref.IsInode() {
		return resolveInode(ref)
	}
	return open(ref.Path)
}

// open opens path and checks that it is a network namespace.
func open(path string) (netns.NsHandle, error) {
	// /proc/PID/ns/* are magic links that read "TYPE:[INODE]": a wrong
	// type is known without opening the file (which may be refused).
	if target, err := os.Readlink(path); err == nil {
		if typ, _, ok := strings.Cut(target, ":["); ok && strings.HasSuffix(target, "]") && typ != "net" {
			return netns.None(), forwarder.Errorf(forwarder.CodeInvalidArgument, "", "%q is a %s namespace, not a network namespace", path, typ)
		}
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return netns.None(), openError(path, err)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		_ = unix.Close(fd)
		if err != nil && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
			return netns.None(), forwarder.Errorf(forwarder.CodeInternal, "", "network namespace %q: namespace type: %w", path, err)
		}
		return netns.None(), forwarder.Errorf(forwarder.CodeInvalidArgument, "", "%q is not a network namespace", path)
	}
	return netns.NsHandle(fd), nil
}

func openError(path string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
		return forwarder.Errorf(forwarder.CodeNotFound, "", "network namespace %q does not exist: %w", path, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return forwarder.Errorf(forwarder.CodePermissionDenied, "", "open network namespace %q: %w", path, err)
	default:
		return forwarder.Errorf(forwarder.CodeInvalidArgument, "", "open network namespace %q: %w", path, err)
	}
}

type devIno struct{ dev, ino uint64 }

// inodeCache remembers where an nsfs inode was last found. A hit is
// re-verified before use because pids and names are recycled.
var inodeCache = struct {
	sync.Mutex
	paths map[devIno]string
}{paths: make(map[devIno]string)}

// searchGlobs are scanned in order for an inode reference: named namespaces
// first (cheap, stable), then every process's namespace, then every
// thread's (a client may have moved only a locked thread).
var searchGlobs = []string{"/run/netns/*", "/var/run/netns/*", "/proc/[0-9]*/ns/net", "/proc/[0-9]*/task/[0-9]*/ns/net"}

// fdGlob is the last resort: a namespace that no mount, process or thread
// is in, held only by an open descriptor (a client that created it, or
// NSM's grpcfd holding it to pass it on). Only descriptors whose link reads
// "net:[INO]" are opened.
const fdGlob = "/proc/[0-9]*/fd/*"

// pfUserWorker is the kernel's PF_USER_WORKER task flag: a kernel worker
// running as a thread of a user process (vhost, io_uring).
const pfUserWorker = 0x00004000

// userWorker reports whether the namespace file p (/proc/PID/task/TID/ns/net)
// is a kernel worker thread's. Such a thread is in the namespace its owner
// was in when it made it: VPP's vhost thread of a tap stays in the
// workload's namespace after the workload is gone, and keeps it alive,
// but is not the workload.
func userWorker(p string) bool {
	if !strings.Contains(p, "/task/") {
		return false
	}
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(p)), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ppid pgrp session tty_nr tpgid flags …; comm may
	// hold spaces and parentheses, so fields count from the last ")".
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 7 {
		return false
	}
	flags, err := strconv.ParseUint(f[6], 10, 64)
	return err == nil && flags&pfUserWorker != 0
}

func statDevIno(path string) (devIno, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devIno{}, false
	}
	return devIno{dev: st.Dev, ino: st.Ino}, true
}

func resolveInode(ref forwarder.NetNSRef) (netns.NsHandle, error) {
	key := devIno{dev: ref.Dev, ino: ref.Ino}
	inodeCache.Lock()
	cached, ok := inodeCache.paths[key]
	inodeCache.Unlock()
	if ok {
		if h, err := openVerified(cached, key); err == nil {
			return h, nil
		}
		inodeCache.Lock()
		delete(inodeCache.paths, key)
		inodeCache.Unlock()
	}
	for _, g := range searchGlobs {
		matches, _ := filepath.Glob(g)
		for _, p := range matches {
			if di, ok := statDevIno(p); !ok || di != key {
				continue
			}
			if userWorker(p) {
				continue
			}
			h, err := openVerified(p, key)
			if err != nil {
				continue // the process exited or the name went away meanwhile
			}
			inodeCache.Lock()
			inodeCache.paths[key] = p
			inodeCache.Unlock()
			return h, nil
		}
	}
	if h, ok := resolveFromFDs(key); ok {
		return h, nil
	}
	return netns.None(), forwarder.Errorf(forwarder.CodeNotFound, "", "network namespace %s: no namespace file with that device and inode", ref)
}

// resolveFromFDs finds the namespace among open file descriptors. The path
// is not cached: descriptor numbers are reused too quickly to be worth it.
func resolveFromFDs(key devIno) (netns.NsHandle, bool) {
	want := fmt.Sprintf("net:[%d]", key.ino)
	matches, _ := filepath.Glob(fdGlob)
	for _, p := range matches {
		if target, err := os.Readlink(p); err != nil || target != want {
			continue
		}
		if h, err := openVerified(p, key); err == nil {
			return h, true
		}
	}
	return netns.None(), false
}

// openVerified opens path and checks that the opened file (not just the
// path, which may have been replaced) has the wanted device and inode.
func openVerified(path string, want devIno) (netns.NsHandle, error) {
	h, err := open(path)
	if err != nil {
		return h, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil || st.Dev != want.dev || st.Ino != want.ino {
		_ = h.Close()
		return netns.None(), fs.ErrNotExist
	}
	return h, nil
}

// Do runs fn on a locked OS thread switched into ns and switches back
// afterwards. The caller's own thread never moves. If switching back fails,
// the thread stays locked, so the runtime ends it with its goroutine instead
// of reusing it in the wrong namespace. Goroutines that fn starts do not run
// in ns.
func Do(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fmt.Errorf("netns do: namespace handle is not open")
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns do: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			// setns failed: the thread did not move. Still, do not
			// trust it; it dies with this goroutine.
			errc <- fmt.Errorf("netns do: enter %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the thread exits with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("netns do: return to %s: %w", orig, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Same reports whether a and b are the same namespace.
func Same(a, b netns.NsHandle) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a), &sa); err != nil {
		return false, fmt.Errorf("netns stat: %w", err)
	}
	if err := unix.Fstat(int(b), &sb); err != nil {
		return false, fmt.Errorf("netns stat: %w", err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// InodeURL returns the inode:// URL of the namespace behind h.
func InodeURL(h netns.NsHandle) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return "", fmt.Errorf("netns stat: %w", err)
	}
	return forwarder.NetNSRef{Dev: st.Dev, Ino: st.Ino}.String(), nil
}
