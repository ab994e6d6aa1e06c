package bench

import (
	"math"
	"slices"
	"time"
)

// Stat is one figure measured over several runs: its spread and the raw
// per-run values (in the figure's unit).
type Stat struct {
	N      int       `json:"n"`
	Median float64   `json:"median"`
	Mean   float64   `json:"mean"`
	Stddev float64   `json:"stddev"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Runs   []float64 `json:"runs"`
}

// Summarize returns the Stat of runs; an empty slice gives the zero Stat.
func Summarize(runs []float64) Stat {
	if len(runs) == 0 {
		return Stat{}
	}
	s := Stat{N: len(runs), Runs: slices.Clone(runs)}
	sorted := slices.Sorted(slices.Values(runs))
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	s.Median = Percentile(sorted, 50)
	var sum float64
	for _, v := range runs {
		sum += v
	}
	s.Mean = sum / float64(len(runs))
	if len(runs) > 1 {
		var sq float64
		for _, v := range runs {
			sq += (v - s.Mean) * (v - s.Mean)
		}
		s.Stddev = math.Sqrt(sq / float64(len(runs)-1))
	}
	return s
}

// Valid reports whether s holds at least one run.
func (s Stat) Valid() bool { return s.N > 0 }

// Percentile returns the p-th percentile (0..100) of sorted, which must be
// in ascending order, interpolating linearly between closest ranks (the
// method of numpy's default and of most benchmark tools). It is NaN for an
// empty slice.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	switch {
	case n == 0:
		return math.NaN()
	case n == 1 || p <= 0:
		return sorted[0]
	case p >= 100:
		return sorted[n-1]
	}
	rank := p / 100 * float64(n-1)
	lo := int(math.Floor(rank))
	frac := rank - float64(lo)
	if lo+1 >= n {
		return sorted[n-1]
	}
	return sorted[lo] + frac*(sorted[lo+1]-sorted[lo])
}

// DurationPercentiles returns the given percentiles of ds in milliseconds.
func DurationPercentiles(ds []time.Duration, ps ...float64) []float64 {
	ms := make([]float64, len(ds))
	for i, d := range ds {
		ms[i] = float64(d) / float64(time.Millisecond)
	}
	slices.Sort(ms)
	out := make([]float64, len(ps))
	for i, p := range ps {
		out[i] = Percentile(ms, p)
	}
	return out
}

// Ratios divides each run of s by the run of ref with the same index (runs
// measured in the same round), so that drift between rounds cancels out.
func Ratios(s, ref Stat) Stat {
	n := min(len(s.Runs), len(ref.Runs))
	out := make([]float64, 0, n)
	for i := range n {
		if ref.Runs[i] != 0 {
			out = append(out, s.Runs[i]/ref.Runs[i])
		}
	}
	return Summarize(out)
}
