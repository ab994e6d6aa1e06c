package sriov

import (
	"sync"
	"sync/atomic"
)

// figures are the dataplane's event counters.
type figures struct {
	mu                 sync.Mutex
	allocationFailures map[string]uint64 // by pool
	restoreFailures    atomic.Uint64
	reclaimed          atomic.Uint64
}

func (f *figures) allocationFailed(pool string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allocationFailures == nil {
		f.allocationFailures = map[string]uint64{}
	}
	f.allocationFailures[pool]++
}
