package sriov

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// pfEntry is a configured PF as discovered.
type pfEntry struct {
	cfg       PFConfig
	pci       string
	netdev    string
	vlanFirst int // 0: no per-connection VLANs
	vlanLast  int
	vfs       []*vfEntry // by index order
}

// tokens returns the pools ("<serviceDomain>/<capability>") the PF serves.
func (pf *pfEntry) tokens() []string {
	var out []string
	for _, d := range pf.cfg.ServiceDomains {
		for _, c := range pf.cfg.Capabilities {
			out = append(out, d+"/"+c)
		}
	}
	return out
}

func (pf *pfEntry) serves(token string) bool {
	d, c, err := ParseToken(token)
	return err == nil && slices.Contains(pf.cfg.ServiceDomains, d) && slices.Contains(pf.cfg.Capabilities, c)
}

// vfEntry is a VF the config lets the forwarder use.
type vfEntry struct {
	pf     *pfEntry
	vf     VF
	use    string
	driver string // the driver the config expects for its use
	owner  *record
}

// record is a VF's allocation as persisted: enough to find and restore the
// VF after a restart without any in-memory state. It is written before the
// VF is changed at all.
type record struct {
	ConnID   string             `json:"conn_id"`
	Side     forwarder.SideKind `json:"side"`
	Use      string             `json:"use"`
	PF       string             `json:"pf"`
	PFNetdev string             `json:"pf_netdev"`
	Index    int                `json:"index"`
	PCI      string             `json:"pci"`
	// Group lists the VFs taken with this one (the rest of its IOMMU group,
	// VFIO only); their records name this VF in Leader.
	Group  []string `json:"group,omitempty"`
	Leader string   `json:"leader,omitempty"`
	VLAN   int      `json:"vlan"`
	MAC    string   `json:"mac"`
	// NetNS and IfName say where the VF netdev was moved (KERNEL).
	NetNS  string `json:"netns,omitempty"`
	IfName string `json:"ifname,omitempty"`
	// CgroupDir is the client cgroup given the VFIO devices.
	CgroupDir  string `json:"cgroup_dir,omitempty"`
	IOMMUGroup int    `json:"iommu_group"`
	Orig       orig   `json:"orig"`
}

// orig is what a VF was before the forwarder touched it.
type orig struct {
	// VF is nil when the PF could not report the settings: safe defaults
	// are restored then.
	VF             *VFSettings  `json:"vf,omitempty"`
	Netdev         *NetdevState `json:"netdev,omitempty"`
	Driver         string       `json:"driver"`
	DriverOverride string       `json:"driver_override"`
}

// NetdevState is a VF netdev's own state, captured in the host namespace.
type NetdevState struct {
	Name  string `json:"name"`
	MTU   int    `json:"mtu"`
	Up    bool   `json:"up"`
	Alias string `json:"alias"`
	MAC   string `json:"mac"`
}

func recordKey(pci string) string { return "vf/" + pci }

// pool holds the VFs and who has them. Its mutex guards ownership only;
// the work on a VF is serialised by the dataplane's per-connection lock
// and by vfLocks.
type pool struct {
	mu      sync.Mutex
	pfs     []*pfEntry
	byPCI   map[string]*vfEntry
	store   *forwarder.Store
	figures *figures
	// groupDevices counts the PCI devices of each IOMMU group as sysfs
	// showed them at discovery, managed VFs or not.
	groupDevices map[int]int
}

// errExhausted is matched by allocation failures for want of a VF.
var errExhausted = errors.New("no free VF")

// pick reserves VFs for (connID, side): one VF for KERNEL; for VFIO the
// VF's whole IOMMU group (a VFIO client holds the group's device, so every
// VF in it goes together, and all must be free VFIO VFs). onPF restricts
// the choice to one PF (the endpoint side goes on the client's PF, whose
// switch joins them).
func (p *pool) pick(token, use, onPF, connID string, side forwarder.SideKind) ([]*vfEntry, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pf := range p.pfs {
		if (onPF != "" && pf.pci != onPF) || (onPF == "" && !pf.serves(token)) {
			continue
		}
		for _, v := range pf.vfs {
			if v.owner != nil || v.use != use || !p.eligible(v) {
				continue
			}
			group := []*vfEntry{v}
			if use == UseVFIO && v.vf.IOMMUGroup >= 0 {
				var ok bool
				if group, ok = p.groupFree(v); !ok {
					continue
				}
			} else if use == UseKernel && v.vf.IOMMUGroup >= 0 && p.groupHasVFIO(v) {
				continue
			}
			// The VLAN is taken here, under the lock, so that concurrent
			// connections never share one.
			vlan, err := p.vlanLocked(pf, connID)
			if err != nil {
				break // try the next PF
			}
			for _, g := range group {
				g.owner = &record{ConnID: connID, Side: side, Use: use, VLAN: vlan}
			}
			return group, nil
		}
	}
	return nil, errExhausted
}

// eligible reports whether a free VF can be handed out as configured.
func (p *pool) eligible(v *vfEntry) bool {
	if v.use == UseKernel {
		return v.vf.Driver == v.driver && len(v.vf.Netdevs) == 1
	}
	return true
}

// groupFree returns the members of v's IOMMU group among all known VFs
// when every one is a free VFIO VF; a group member the forwarder does not
// manage makes the group unusable.
func (p *pool) groupFree(v *vfEntry) ([]*vfEntry, bool) {
	var out []*vfEntry
	for _, pf := range p.pfs {
		for _, o := range pf.vfs {
			if o.vf.IOMMUGroup == v.vf.IOMMUGroup {
				if o.owner != nil || o.use != UseVFIO {
					return nil, false
				}
				out = append(out, o)
			}
		}
	}
	return out, len(out) > 0 && p.groupDevices[v.vf.IOMMUGroup] == len(out)
}

func (p *pool) groupHasVFIO(v *vfEntry) bool {
	for _, pf := range p.pfs {
		for _, o := range pf.vfs {
			if o != v && o.vf.IOMMUGroup == v.vf.IOMMUGroup && o.use == UseVFIO && o.owner != nil {
				return true
			}
		}
	}
	return false
}

// release frees VFs owned by rec.
func (p *pool) release(vfs ...*vfEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range vfs {
		v.owner = nil
	}
}

// owned returns the VFs held by connection id (every side), leaders first.
func (p *pool) owned(id string) []*vfEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*vfEntry
	for _, pf := range p.pfs {
		for _, v := range pf.vfs {
			if v.owner != nil && v.owner.ConnID == id {
				out = append(out, v)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b *vfEntry) int {
		return boolInt(a.owner.Leader != "") - boolInt(b.owner.Leader != "")
	})
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// side returns the leader VF of (id, side), nil when there is none. The
// caller holds the connection's lock, under which alone its records change.
func (p *pool) side(id string, side forwarder.SideKind) *vfEntry {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pf := range p.pfs {
		for _, v := range pf.vfs {
			if r := v.owner; r != nil && r.ConnID == id && r.Side == side && r.Leader == "" {
				return v
			}
		}
	}
	return nil
}

// sideRecord returns a copy of the leader record of (id, side), for
// callers without the connection's lock (the watcher, stats).
func (p *pool) sideRecord(id string, side forwarder.SideKind) (*vfEntry, record, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pf := range p.pfs {
		for _, v := range pf.vfs {
			if r := v.owner; r != nil && r.ConnID == id && r.Side == side && r.Leader == "" {
				return v, *r, true
			}
		}
	}
	return nil, record{}, false
}

// update changes records under the pool's lock, so that readers without
// the connection's lock see them whole.
func (p *pool) update(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f()
}

// ownerIDs lists the connections holding VFs.
func (p *pool) ownerIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, pf := range p.pfs {
		for _, v := range pf.vfs {
			if v.owner != nil && !seen[v.owner.ConnID] {
				seen[v.owner.ConnID] = true
				out = append(out, v.owner.ConnID)
			}
		}
	}
	slices.Sort(out)
	return out
}

// vlanLocked returns the VLAN of connection id on pf: the one a VF of the
// connection already holds there, else the lowest of the PF's range that
// no VF holds (reservations included). p.mu is held.
func (p *pool) vlanLocked(pf *pfEntry, id string) (int, error) {
	if pf.vlanFirst == 0 {
		return 0, nil
	}
	used := map[int]bool{}
	for _, v := range pf.vfs {
		if v.owner == nil || v.owner.VLAN == 0 {
			continue
		}
		if id != "" && v.owner.ConnID == id {
			return v.owner.VLAN, nil
		}
		used[v.owner.VLAN] = true
	}
	for n := pf.vlanFirst; n <= pf.vlanLast; n++ {
		if !used[n] {
			return n, nil
		}
	}
	return 0, fmt.Errorf("pf %s: every VLAN of %s is in use", pf.pci, pf.cfg.VLANs)
}

// save persists rec for VF v.
func (p *pool) save(v *vfEntry) error {
	data, err := json.Marshal(v.owner)
	if err != nil {
		return fmt.Errorf("sriov state %s: %w", v.vf.PCI, err)
	}
	return p.store.Put(recordKey(v.vf.PCI), data)
}

func (p *pool) forget(v *vfEntry) error {
	return p.store.Delete(recordKey(v.vf.PCI))
}

// load reads the persisted records and marks their VFs owned. Records of
// VFs that are no longer configured are returned to be restored anyway.
func (p *pool) load() (stray []*record, err error) {
	all, err := p.store.Load()
	if err != nil {
		return nil, fmt.Errorf("sriov state: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, data := range all {
		if !strings.HasPrefix(key, "vf/") {
			continue
		}
		var rec record
		if err := json.Unmarshal(data, &rec); err != nil {
			return nil, fmt.Errorf("sriov state %s: %w", key, err)
		}
		v := p.byPCI[rec.PCI]
		if v == nil {
			stray = append(stray, &rec)
			continue
		}
		v.owner = &rec
	}
	return stray, nil
}
