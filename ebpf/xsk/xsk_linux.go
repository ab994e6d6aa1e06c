package xsk

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Object files written by WriteObjects.
const (
	AllFile     = "nsmfwd-xsk-all.o"
	PinholeFile = "nsmfwd-xsk-pinhole.o"
	// PinholeMap is the name of xskpinhole's map of open flows.
	PinholeMap = "pinholes"
)

// WriteObjects writes both programs' ELF objects into dir (created if
// need be) for VPP to load, replacing what is there, and returns their
// paths.
func WriteObjects(dir string) (all, pinhole string, err error) {
	// VPP, maybe another user, reads them.
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // world-readable on purpose
		return "", "", fmt.Errorf("xsk objects: %w", err)
	}
	write := func(name string, b []byte) (string, error) {
		p := filepath.Join(dir, name)
		tmp, err := os.CreateTemp(dir, name+".*")
		if err != nil {
			return "", fmt.Errorf("xsk objects: %w", err)
		}
		_, err = tmp.Write(b)
		err = errors.Join(err, tmp.Chmod(0o644), tmp.Close())
		if err == nil {
			err = os.Rename(tmp.Name(), p)
		}
		if err != nil {
			_ = os.Remove(tmp.Name())
			return "", fmt.Errorf("xsk objects: %w", err)
		}
		return p, nil
	}
	if all, err = write(AllFile, _XskallBytes); err != nil {
		return "", "", err
	}
	if pinhole, err = write(PinholeFile, _XskpinholeBytes); err != nil {
		return "", "", err
	}
	return all, pinhole, nil
}

// Flow is one pinhole: UDP from Remote to the local Port.
type Flow struct {
	Remote netip.Addr
	Port   uint16
}

func key(f Flow) xskpinholePinholeKey {
	return xskpinholePinholeKey{Addr: f.Remote.As16(), Port: f.Port}
}

// programInfo is the kernel's information on the BPF program with id.
func programInfo(id uint32) (*ebpf.ProgramInfo, error) {
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return nil, fmt.Errorf("xdp program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return nil, fmt.Errorf("xdp program %d: %w", id, err)
	}
	return info, nil
}

// ProgramName is the name of the XDP program with id (as the kernel
// keeps it: 15 characters at most).
func ProgramName(id uint32) (string, error) {
	info, err := programInfo(id)
	if err != nil {
		return "", err
	}
	return info.Name, nil
}

// keys lists the keys of a pinholes map.
func keys(m *ebpf.Map) ([]xskpinholePinholeKey, error) {
	var (
		k   xskpinholePinholeKey
		v   uint8
		out []xskpinholePinholeKey
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, k)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("pinholes map: %w", err)
	}
	return out, nil
}

// Flows lists the flows in the pinholes map of the xskpinhole program
// with id.
func Flows(progID uint32) ([]Flow, error) {
	m, err := pinholeMap(progID)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	ks, err := keys(m)
	out := make([]Flow, len(ks))
	for i, k := range ks {
		out[i] = Flow{Remote: netip.AddrFrom16(k.Addr).Unmap(), Port: k.Port}
	}
	return out, err
}

// pinholeMap opens the pinholes map of the xskpinhole program with id.
func pinholeMap(progID uint32) (*ebpf.Map, error) {
	info, err := programInfo(progID)
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if mi, err := m.Info(); err == nil && mi.Name == PinholeMap {
			return m, nil
		}
		_ = m.Close()
	}
	return nil, fmt.Errorf("xdp program %d (%s) has no %s map: not nsmfwd's pinhole program", progID, info.Name, PinholeMap)
}

// SyncPinholes makes the pinholes map of the xskpinhole program with id
// hold exactly flows.
func SyncPinholes(progID uint32, flows []Flow) error {
	m, err := pinholeMap(progID)
	if err != nil {
		return err
	}
	defer m.Close()
	want := map[xskpinholePinholeKey]bool{}
	for _, f := range flows {
		want[key(f)] = true
	}
	have, err := keys(m)
	if err != nil {
		return err
	}
	var stale []xskpinholePinholeKey
	for _, k := range have {
		if !want[k] {
			stale = append(stale, k)
		}
		delete(want, k)
	}
	for _, k := range stale {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("pinholes map: %w", err)
		}
	}
	one := uint8(1)
	for k := range want {
		if err := m.Put(&k, &one); err != nil {
			return fmt.Errorf("pinholes map: %w", err)
		}
	}
	return nil
}
