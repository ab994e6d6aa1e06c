package sriov

import "github.com/nsmfwd/nsmfwd/forwarder"

// ErrExhausted exposes errExhausted to the external tests.
var ErrExhausted = errExhausted

// PickedVF is what the tests see of a picked VF.
type PickedVF struct {
	Index, VLAN int
	PF          string
}

// Pick runs the pool's allocation alone (no VF is touched).
func (d *Dataplane) Pick(token, use, onPF, id string, side forwarder.SideKind) ([]PickedVF, error) {
	group, err := d.pool.pick(token, use, onPF, id, side)
	out := make([]PickedVF, 0, len(group))
	for _, v := range group {
		out = append(out, PickedVF{Index: v.vf.Index, VLAN: v.owner.VLAN, PF: v.pf.pci})
	}
	return out, err
}

// ReleaseAll frees every VF picked for id.
func (d *Dataplane) ReleaseAll(id string) { d.pool.release(d.pool.owned(id)...) }

// Available reports whether Pick would succeed.
func (d *Dataplane) Available(token, use string) bool { return d.pool.available(token, use) }
