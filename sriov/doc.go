// Package sriov is the SR-IOV dataplane: PF/VF discovery through a sysfs
// tree with an injectable root, VF pools with restart-safe allocation,
// KERNEL (VF netdev moved into the client's namespace) and VFIO (VF bound
// to vfio-pci, device handed to the client's cgroup) mechanisms, and the
// full restore of every VF setting on Close. docs/sriov.md describes it.
// The dataplane itself is Linux-only; the config and sysfs reading are
// not.
package sriov
