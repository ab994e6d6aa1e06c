package sriov

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// VFCount is how many VFs of one use are free and allocated.
type VFCount struct {
	Use       string
	Free      int
	Allocated int
}

// PFFigures are the VF counts of one PF, by use.
type PFFigures struct {
	PF     string // PCI address
	Counts []VFCount
}

// PoolFigures are the VF counts of one pool ("<serviceDomain>/<capability>"),
// by use. A VF counts in every pool its PF serves.
type PoolFigures struct {
	Pool   string
	Counts []VFCount
}

// Figures are the SR-IOV dataplane's pool figures, for metrics.
type Figures struct {
	PFs   []PFFigures
	Pools []PoolFigures
	// AllocationFailures counts Requests refused for want of a VF, by pool.
	AllocationFailures map[string]uint64
	// RestoreFailures counts VFs whose original state could not be fully
	// restored.
	RestoreFailures uint64
	// Reclaimed counts VFs taken back from connections whose client was
	// gone (leaks closed).
	Reclaimed uint64
}

// Figures returns the current pool figures.
func (d *Dataplane) Figures() Figures {
	p := d.pool
	out := Figures{RestoreFailures: p.figures.restoreFailures.Load(), Reclaimed: p.figures.reclaimed.Load()}
	p.figures.mu.Lock()
	out.AllocationFailures = make(map[string]uint64, len(p.figures.allocationFailures))
	for k, v := range p.figures.allocationFailures {
		out.AllocationFailures[k] = v
	}
	p.figures.mu.Unlock()

	p.mu.Lock()
	defer p.mu.Unlock()
	pools := map[string]map[string]*VFCount{}
	for _, pf := range p.pfs {
		counts := map[string]*VFCount{}
		for _, v := range pf.vfs {
			add(counts, v)
			for _, tok := range pf.tokens() {
				if pools[tok] == nil {
					pools[tok] = map[string]*VFCount{}
				}
				add(pools[tok], v)
			}
		}
		out.PFs = append(out.PFs, PFFigures{PF: pf.pci, Counts: sorted(counts)})
	}
	for tok, counts := range pools {
		out.Pools = append(out.Pools, PoolFigures{Pool: tok, Counts: sorted(counts)})
	}
	slices.SortFunc(out.Pools, func(a, b PoolFigures) int {
		if a.Pool < b.Pool {
			return -1
		}
		return boolInt(a.Pool > b.Pool)
	})
	return out
}

func add(m map[string]*VFCount, v *vfEntry) {
	c := m[v.use]
	if c == nil {
		c = &VFCount{Use: v.use}
		m[v.use] = c
	}
	if v.owner != nil {
		c.Allocated++
	} else {
		c.Free++
	}
}

func sorted(m map[string]*VFCount) []VFCount {
	out := make([]VFCount, 0, len(m))
	for _, c := range m {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b VFCount) int {
		if a.Use < b.Use {
			return -1
		}
		return boolInt(a.Use > b.Use)
	})
	return out
}

// Collector exports Figures as Prometheus metrics; register it next to the
// forwarder's own (docs/sriov.md lists them).
type Collector struct {
	d                                           *Dataplane
	pfVFs, poolVFs, allocFail, restore, reclaim *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector reading d's figures at each scrape.
func NewCollector(d *Dataplane) *Collector {
	return &Collector{
		d: d,
		pfVFs: prometheus.NewDesc("nsmfwd_sriov_pf_vfs", "VFs of a physical function by use and state (free, allocated).",
			[]string{"pf", "use", "state"}, nil),
		poolVFs: prometheus.NewDesc("nsmfwd_sriov_vfs", "VFs of a pool (<serviceDomain>/<capability>) by use and state.",
			[]string{"pool", "use", "state"}, nil),
		allocFail: prometheus.NewDesc("nsmfwd_sriov_allocation_failures_total", "Requests refused for want of a free VF, by pool.",
			[]string{"pool"}, nil),
		restore: prometheus.NewDesc("nsmfwd_sriov_restore_failures_total", "VFs whose original state could not be fully restored.", nil, nil),
		reclaim: prometheus.NewDesc("nsmfwd_sriov_reclaimed_total", "VFs taken back from connections whose client was gone.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.pfVFs, c.poolVFs, c.allocFail, c.restore, c.reclaim} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	f := c.d.Figures()
	emit := func(desc *prometheus.Desc, key string, counts []VFCount) {
		for _, n := range counts {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n.Free), key, n.Use, "free")
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(n.Allocated), key, n.Use, "allocated")
		}
	}
	for _, pf := range f.PFs {
		emit(c.pfVFs, pf.PF, pf.Counts)
	}
	for _, p := range f.Pools {
		emit(c.poolVFs, p.Pool, p.Counts)
	}
	for pool, n := range f.AllocationFailures {
		ch <- prometheus.MustNewConstMetric(c.allocFail, prometheus.CounterValue, float64(n), pool)
	}
	ch <- prometheus.MustNewConstMetric(c.restore, prometheus.CounterValue, float64(f.RestoreFailures))
	ch <- prometheus.MustNewConstMetric(c.reclaim, prometheus.CounterValue, float64(f.Reclaimed))
}
