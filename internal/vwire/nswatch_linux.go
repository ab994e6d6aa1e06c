package vwire

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// NetNSPinDirs are where namespaces are pinned by name: iproute2's
// `ip netns add` and containerd's pod sandboxes (cni-…).
var NetNSPinDirs = []string{"/run/netns", "/var/run/netns"}

// NetNSWatch hints at the end of workloads' namespaces that hold none of
// the node's links, and so raise no link event there: a VPP tap lives only
// in the workload's namespace, and VPP's tap descriptor even keeps that
// namespace alive after its last process and pin are gone, so neither a
// link nor an nsid event comes. What does come: the removal of the
// namespace's pin (inotify on NetNSPinDirs) and the exit of the process
// a /proc/PID URL names (a pidfd). Each sends a check-everything hint; the
// receiver confirms with Watcher.Alive. Namespaces named otherwise are
// left to the caller's periodic check.
type NetNSWatch struct {
	mu     sync.Mutex
	pids   map[int]bool // tracked (watched while Run runs)
	ctx    context.Context
	ch     chan<- forwarder.Death
	wg     sync.WaitGroup
	closed bool
}

// aLongTimeAgo is a read deadline that ends a blocked read at once.
var aLongTimeAgo = time.Unix(1, 0)

// procURL matches a namespace URL naming a process's namespace.
var procURL = regexp.MustCompile(`^file:///proc/([0-9]+)/`)

// Track watches the process a /proc/PID namespace URL names (from when
// Run starts, if it has not yet); other URLs need nothing here.
func (w *NetNSWatch) Track(url string) {
	m := procURL.FindStringSubmatch(url)
	if m == nil {
		return
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.pids[pid] {
		return
	}
	if w.pids == nil {
		w.pids = map[int]bool{}
	}
	w.pids[pid] = true
	if w.ctx != nil { // else Run starts it
		w.wg.Go(func() { w.watchPID(pid) })
	}
}

func (w *NetNSWatch) watchPID(pid int) {
	defer func() {
		w.mu.Lock()
		delete(w.pids, pid)
		w.mu.Unlock()
	}()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		TrySend(w.ch, forwarder.Death{}) // already gone
		return
	}
	defer unix.Close(fd)
	for w.ctx.Err() == nil {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 250)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if n > 0 {
			TrySend(w.ch, forwarder.Death{})
			return
		}
	}
}

// Run watches until ctx ends, sending hints on ch.
func (w *NetNSWatch) Run(ctx context.Context, ch chan<- forwarder.Death) error {
	w.mu.Lock()
	w.ctx, w.ch = ctx, ch
	for pid := range w.pids {
		w.wg.Go(func() { w.watchPID(pid) })
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		w.wg.Wait()
	}()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		<-ctx.Done()
		return ctx.Err()
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	seen := map[string]bool{}
	for _, d := range NetNSPinDirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil || seen[real] {
			continue
		}
		seen[real] = true
		_, _ = unix.InotifyAddWatch(fd, real, unix.IN_DELETE|unix.IN_MOVED_FROM)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Read(buf); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			<-ctx.Done()
			return ctx.Err()
		}
		// Which pin went does not matter: the check looks at everything.
		TrySend(ch, forwarder.Death{})
	}
}
