package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
)

// Machine is a guest booted with QEMU under TCG (nested KVM is not usable
// where this tier runs).
type Machine struct {
	Kernel  string   // the kernel image
	Initrd  string   // the initramfs
	Append  string   // extra kernel command line
	Console string   // file the kernel's console (ttyS0) is written to
	Devices []string // extra QEMU arguments (NICs)
	MemMiB  int
	CPUs    int
}

// Args is the QEMU command line. The run output port (ttyS1) is QEMU's
// stdout.
func (m *Machine) Args() []string {
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
		"-machine", "q35,kernel-irqchip=split", "-accel", "tcg", "-cpu", "max",
		"-smp", fmt.Sprint(m.CPUs), "-m", fmt.Sprint(m.MemMiB),
		// The IOMMU comes before the devices it translates for.
		"-device", "intel-iommu,intremap=on,caching-mode=on",
		"-kernel", m.Kernel, "-initrd", m.Initrd,
		"-append", "console=ttyS0 intel_iommu=on panic=-1 rdinit=/init " + m.Append,
		"-serial", "file:" + m.Console, "-serial", "stdio",
	}
	return append(args, m.Devices...)
}

// Run boots the guest and calls line for every line of run output until
// the guest powers off. It kills the guest when ctx ends.
func (m *Machine) Run(ctx context.Context, line func(string)) error {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return fmt.Errorf("%w: qemu-system-x86_64 (Debian package qemu-system-x86)", ErrMissing)
	}
	cmd := exec.Command(qemu, m.Args()...)
	cmd.Stdin = nil
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stop()
	s := bufio.NewReader(out)
	for {
		l, err := s.ReadString('\n')
		if l != "" {
			line(strings.TrimRight(l, "\r\n"))
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("guest killed: %w", context.Cause(ctx))
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// ConsoleTail returns the last n lines of the guest's console log.
func ConsoleTail(path string, n int) string {
	raw, err := os.ReadFile(path) //nolint:gosec // our own log
	if err != nil {
		return fmt.Sprintf("(no console log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
