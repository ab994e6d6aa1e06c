package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Env is what a harness run owns: its temp dir, namespaces, processes and
// BPF pin dir, each registered for cleanup as it is created.
type Env struct {
	Log *slog.Logger
	// Bin holds nsmfwd and nse.
	Bin string
	// Self is the nsmbench binary, run in namespaces as the ping-pong
	// generator.
	Self string
	// Dir is the run's temp dir.
	Dir string
	// ID prefixes every namespace name and NSM_NAME of the run.
	ID string
	// PinDir is the run's NSM_BPF_PIN_DIR.
	PinDir string
	// ClientCPU and ServerCPU are where traffic generators are pinned.
	ClientCPU, ServerCPU int

	mu       sync.Mutex
	cleanups []cleanup
}

type cleanup struct {
	name string
	fn   func() error
}

// NewEnv creates the run's temp dir and names.
func NewEnv(log *slog.Logger, bin, self string) (*Env, error) {
	dir, err := os.MkdirTemp("", "nsmbench-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	id := fmt.Sprintf("nsmb%d", os.Getpid())
	e := &Env{Log: log, Bin: bin, Self: self, Dir: dir, ID: id, PinDir: filepath.Join("/sys/fs/bpf", id)}
	e.Defer("temp dir", func() error { return os.RemoveAll(dir) })
	e.Defer("bpf pin dir", func() error { return os.RemoveAll(e.PinDir) })
	return e, nil
}

// Defer registers fn to run at Cleanup, before everything registered
// earlier.
func (e *Env) Defer(name string, fn func() error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleanups = append(e.cleanups, cleanup{name, fn})
}

// Once wraps fn so that it runs at most once, and registers it for Cleanup;
// call the returned function to run it earlier.
func (e *Env) Once(name string, fn func() error) func() error {
	var once sync.Once
	var err error
	f := func() error {
		once.Do(func() { err = fn() })
		return err
	}
	e.Defer(name, f)
	return f
}

// Cleanup undoes everything registered, last first, and returns the joined
// errors.
func (e *Env) Cleanup() error {
	e.mu.Lock()
	cs := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	var errs []error
	for i := len(cs) - 1; i >= 0; i-- {
		if err := cs[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", cs[i].name, err))
		}
	}
	return errors.Join(errs...)
}

// run runs a command to completion and returns its combined output.
func run(ctx context.Context, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// runStdout runs a command to completion and returns its standard output;
// the standard error goes into the error, if any.
func runStdout(ctx context.Context, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// runAll runs each command in turn and stops at the first error.
func runAll(ctx context.Context, cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := run(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// inNS prefixes args to run them in the named namespace.
func inNS(ns string, args ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, args...)
}

// pinned prefixes args to pin them to cpu.
func pinned(cpu int, args ...string) []string {
	return append([]string{"taskset", "-c", strconv.Itoa(cpu)}, args...)
}

// NewNS creates the namespace <ID>-<role> with lo up, registered for
// deletion.
func (e *Env) NewNS(ctx context.Context, role string) (string, error) {
	name := e.ID + "-" + role
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return "", err
	}
	e.Defer("netns "+name, func() error {
		_, err := run(context.Background(), "ip", "netns", "del", name)
		return err
	})
	if _, err := run(ctx, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return "", err
	}
	return name, nil
}

// NSPath returns the bind-mount path of a namespace made by NewNS.
func NSPath(ns string) string { return filepath.Join("/run/netns", ns) }

// Proc is a process the harness started.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
	err  error
}

// Start starts args with env added, its output in <Dir>/<name>.log, killed
// if the harness dies, and registered to be stopped at Cleanup.
func (e *Env) Start(name string, env []string, args ...string) (*Proc, error) {
	logPath := filepath.Join(e.Dir, name+".log")
	logf, err := os.OpenFile(filepath.Clean(logPath), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log %s: %w", name, err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logf.Close()
		close(p.done)
	}()
	e.Defer("process "+name, func() error { p.Stop(2 * time.Second); return nil })
	return p, nil
}

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Tail returns the last lines of the process's log, for error messages.
func (p *Proc) Tail() string {
	b, _ := os.ReadFile(p.Log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// waitFile waits for path to exist, for the process p to die, or ctx.
func waitFile(ctx context.Context, path string, p *Proc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited before %s appeared: %s", p.Name, path, p.Tail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// RSSKiB returns VmRSS of pid from /proc/PID/status.
func RSSKiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status: %w", err)
	}
	return parseVmRSS(string(b))
}

func parseVmRSS(status string) (float64, error) {
	for line := range strings.SplitSeq(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) < 1 {
				break
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, fmt.Errorf("VmRSS %q: %w", rest, err)
			}
			return v, nil
		}
	}
	return 0, errors.New("no VmRSS in status")
}
