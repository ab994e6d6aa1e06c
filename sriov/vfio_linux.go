package sriov

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// NSM's VFIO mechanism: its type and parameters (equal to the constants of
// github.com/networkservicemesh/api/pkg/api/networkservice/mechanisms/vfio,
// which a dataplane does not import).
const (
	MechanismVFIO = "VFIO"
	// ParamCgroupDir is the client's cgroup, relative to the cgroup
	// hierarchy's root (as /proc/<pid>/cgroup shows it). Set by the client.
	ParamCgroupDir = "cgroupDir"
	// The parameters below are set by the forwarder for the client.
	ParamIOMMUGroup  = "iommuGroup"
	ParamVfioMajor   = "vfioMajor"   // /dev/vfio/vfio
	ParamVfioMinor   = "vfioMinor"   // /dev/vfio/vfio
	ParamDeviceMajor = "deviceMajor" // /dev/vfio/<iommuGroup>
	ParamDeviceMinor = "deviceMinor" // /dev/vfio/<iommuGroup>
)

// VFIOMechanism is the spec of NSM's VFIO mechanism, for the forwarder's
// mechanism registry.
func VFIOMechanism() forwarder.MechanismSpec {
	return forwarder.MechanismSpec{Type: MechanismVFIO, Cls: forwarder.ClsLocal, Validate: validateVFIO}
}

func validateVFIO(m forwarder.Mechanism, field string) error {
	f := field + ".parameters." + ParamCgroupDir
	dir := m.Param(ParamCgroupDir)
	switch {
	case dir == "":
		return forwarder.Errorf(forwarder.CodeInvalidArgument, f, "missing the client's cgroup directory")
	case strings.Contains(dir, "..") || strings.ContainsAny(dir, "\x00\n"):
		return forwarder.Errorf(forwarder.CodeInvalidArgument, f, "cgroup directory %q: '..' and control characters are not allowed", dir)
	}
	return nil
}

// vfioDevices returns /dev/vfio/vfio and /dev/vfio/<group>, by number.
func (d *Dataplane) vfioDevices(group int) (container, dev Device, err error) {
	if container.Major, container.Minor, err = d.sys.CharDev("misc", "vfio"); err != nil {
		return container, dev, err
	}
	dev.Major, dev.Minor, err = d.sys.CharDev("vfio", strconv.Itoa(group))
	return container, dev, err
}

// configureVFIO binds every VF of the group to vfio-pci, sets the leader's
// MAC and VLAN through the PF and lets the client's cgroup open the
// devices.
func (d *Dataplane) configureVFIO(ctx context.Context, leader *vfEntry, m forwarder.Mechanism) (changed bool, err error) {
	rec := leader.owner
	if rec.IOMMUGroup < 0 {
		return false, fmt.Errorf("vf %s has no IOMMU group: enable the IOMMU for VFIO", leader.vf.PCI)
	}
	group := []*vfEntry{leader}
	for _, pci := range rec.Group {
		if v := d.pool.byPCI[pci]; v != nil {
			group = append(group, v)
		}
	}
	for _, v := range group {
		ch, err := d.bindVFIO(v)
		if err != nil {
			return changed, err
		}
		changed = changed || ch
	}
	want := pfSettings(rec)
	if cur, err := d.pf.VF(ctx, leader.pf.netdev, leader.vf.Index); err != nil || cur != want {
		if err := d.pf.SetVF(ctx, leader.pf.netdev, leader.vf.Index, want); err != nil {
			return changed, fmt.Errorf("vfio vf %s: %w", leader.vf.PCI, err)
		}
		changed = true
	}
	if dir := m.Param(ParamCgroupDir); dir != rec.CgroupDir {
		// The client moved (new pod, same connection): revoke the old
		// grant before giving the new one.
		if err := d.revokeVFIO(ctx, leader); err != nil {
			return changed, err
		}
		d.pool.update(func() { rec.CgroupDir = dir })
		if err := d.pool.save(leader); err != nil {
			return changed, err
		}
	}
	if err := d.cg.Allow(ctx, rec.CgroupDir, d.cgroupDevices(rec.CgroupDir, "")); err != nil {
		return changed, fmt.Errorf("vfio vf %s: %w", leader.vf.PCI, err)
	}
	return changed, nil
}

// bindVFIO binds one VF to vfio-pci through driver_override.
func (d *Dataplane) bindVFIO(v *vfEntry) (bool, error) {
	unlock := d.vfLocks.Lock(v.vf.PCI)
	defer unlock()
	drv, err := d.sys.Driver(v.vf.PCI)
	if err != nil {
		return false, err
	}
	if drv == DriverVFIO {
		return false, nil
	}
	if err := d.pci.SetDriverOverride(v.vf.PCI, DriverVFIO); err != nil {
		return true, err
	}
	if err := d.pci.Unbind(v.vf.PCI); err != nil {
		return true, err
	}
	if err := d.pci.Probe(v.vf.PCI); err != nil {
		return true, err
	}
	if drv, err = d.sys.Driver(v.vf.PCI); err != nil || drv != DriverVFIO {
		return true, fmt.Errorf("vf %s: bound to %q after probing with driver_override vfio-pci (is the vfio-pci module loaded?): %w", v.vf.PCI, drv, err)
	}
	return true, nil
}

// restoreDriver gives a VF back its original driver and driver_override.
func (d *Dataplane) restoreDriver(_ context.Context, v *vfEntry) error {
	o := v.owner.Orig
	cur, err := d.sys.Driver(v.vf.PCI)
	if err != nil {
		return err
	}
	ov, err := d.sys.DriverOverride(v.vf.PCI)
	if err != nil {
		return err
	}
	if cur == o.Driver && ov == o.DriverOverride {
		return nil
	}
	var errs []error
	errs = append(errs, d.pci.SetDriverOverride(v.vf.PCI, o.DriverOverride))
	if cur != o.Driver {
		errs = append(errs, d.pci.Unbind(v.vf.PCI))
		if o.Driver != "" {
			errs = append(errs, d.pci.Probe(v.vf.PCI))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restore vf %s driver %q: %w", v.vf.PCI, o.Driver, err)
	}
	if cur, err = d.sys.Driver(v.vf.PCI); err != nil || cur != o.Driver {
		return fmt.Errorf("restore vf %s: bound to %q, want %q: %w", v.vf.PCI, cur, o.Driver, err)
	}
	return nil
}

// cgroupDevices is the full set of devices granted to cgroup dir by the
// VFIO allocations other than the one led by except.
func (d *Dataplane) cgroupDevices(dir, except string) []Device {
	d.pool.mu.Lock()
	var groups []int
	for _, pf := range d.pool.pfs {
		for _, v := range pf.vfs {
			if r := v.owner; r != nil && r.Use == UseVFIO && r.Leader == "" && r.CgroupDir == dir && v.vf.PCI != except {
				groups = append(groups, r.IOMMUGroup)
			}
		}
	}
	d.pool.mu.Unlock()
	var out []Device
	for _, g := range groups {
		c, dev, err := d.vfioDevices(g)
		if err != nil {
			continue
		}
		if len(out) == 0 {
			out = append(out, c)
		}
		out = append(out, dev)
	}
	return out
}

// revokeVFIO withdraws the leader's group device from its cgroup (and the
// container device when no other grant of that cgroup needs it).
func (d *Dataplane) revokeVFIO(ctx context.Context, leader *vfEntry) error {
	rec := leader.owner
	if rec.CgroupDir == "" || rec.IOMMUGroup < 0 {
		return nil
	}
	remaining := d.cgroupDevices(rec.CgroupDir, leader.vf.PCI)
	c, dev, err := d.vfioDevices(rec.IOMMUGroup)
	if err != nil {
		return err
	}
	removed := []Device{dev}
	if len(remaining) == 0 {
		removed = append(removed, c)
	}
	if err := d.cg.Revoke(ctx, rec.CgroupDir, removed, remaining); err != nil {
		return fmt.Errorf("vfio vf %s: %w", leader.vf.PCI, err)
	}
	return nil
}

// setVFIOParams tells the client what it was given, as NSM's VFIO
// mechanism does.
func (d *Dataplane) setVFIOParams(v *vfEntry, p map[string]string) {
	rec := v.owner
	p[ParamIOMMUGroup] = strconv.Itoa(rec.IOMMUGroup)
	p[ParamPCIAddress] = v.vf.PCI
	if c, dev, err := d.vfioDevices(rec.IOMMUGroup); err == nil {
		p[ParamVfioMajor], p[ParamVfioMinor] = strconv.FormatUint(uint64(c.Major), 10), strconv.FormatUint(uint64(c.Minor), 10)
		p[ParamDeviceMajor], p[ParamDeviceMinor] = strconv.FormatUint(uint64(dev.Major), 10), strconv.FormatUint(uint64(dev.Minor), 10)
	}
}
