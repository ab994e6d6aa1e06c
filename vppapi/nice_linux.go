package vppapi

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// withNice runs start (which forks VPP) on a thread whose nice value is
// nice, so the child inherits it and every thread VPP creates after it;
// the thread gets its own value back afterwards. nice 0 leaves everything
// as it is.
func withNice(nice int, start func() error) error {
	if nice == 0 {
		return start()
	}
	runtime.LockOSThread()
	tid := unix.Gettid()
	raw, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nice %d: %w", nice, err)
	}
	old := 20 - raw // the raw syscall answers 20 - nice
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nice %d: %w", nice, err)
	}
	err = start()
	if rerr := unix.Setpriority(unix.PRIO_PROCESS, tid, old); rerr != nil {
		// Leave the thread locked: it exits with this goroutine instead
		// of running others at VPP's priority.
		return err
	}
	runtime.UnlockOSThread()
	return err
}
