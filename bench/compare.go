package bench

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// DefaultThreshold is the relative change (10 %) beyond which Compare
// calls a figure that got worse a regression.
const DefaultThreshold = 0.10

// Change is one figure of two runs side by side.
type Change struct {
	// Figure names the row or level and the figure.
	Figure string
	// Unit of Old and New ("×ref" for a ratio against the reference).
	Unit     string
	Old, New Stat
	// Delta is the relative change of the median, (new - old) / old.
	Delta          float64
	HigherIsBetter bool
	// Gated figures can be regressions; the others are shown for
	// information (absolute dataplane figures depend on the runner's
	// hardware, which the ratio against the reference cancels).
	Gated bool
}

// Worse reports whether the figure moved in the bad direction by more than
// threshold and every round of the new run is worse than every round of
// the old one, so that a change within the rounds' spread is not flagged.
func (c Change) Worse(threshold float64) bool {
	if c.HigherIsBetter {
		return c.Delta < -threshold && c.New.Max < c.Old.Min
	}
	return c.Delta > threshold && c.New.Min > c.Old.Max
}

// Better is Worse in the good direction.
func (c Change) Better(threshold float64) bool {
	if c.HigherIsBetter {
		return c.Delta > threshold && c.New.Min > c.Old.Max
	}
	return c.Delta < -threshold && c.New.Max < c.Old.Min
}

// Comparison is the outcome of Compare.
type Comparison struct {
	Threshold float64
	Old, New  *Results
	// Changes lists every figure present in both runs.
	Changes []Change
	// Notes say which figures were not compared and why.
	Notes []string
}

// Regressions returns the gated figures that got worse beyond the
// threshold.
func (c *Comparison) Regressions() []Change {
	var out []Change
	for _, ch := range c.Changes {
		if ch.Gated && ch.Worse(c.Threshold) {
			out = append(out, ch)
		}
	}
	return out
}

// Compare compares a run with an earlier one (nsmbench compare, run by the
// bench workflow against the previous main run). Dataplane rows are judged
// by their ratio to the reference measured in the same round, which
// cancels the difference between two runner machines; their absolute
// figures are listed for information. Control-plane figures have no
// reference, so they are judged only when both runs had the same number of
// CPUs. Nothing is judged when either run is a quick one.
func Compare(old, cur *Results, threshold float64) *Comparison {
	c := &Comparison{Threshold: threshold, Old: old, New: cur}
	if old.Schema != cur.Schema {
		c.Notes = append(c.Notes, fmt.Sprintf("results schema %d vs %d: nothing compared", old.Schema, cur.Schema))
		return c
	}
	// A quick run is not for numbers: against or with one, nothing is judged.
	judged := !old.Config.Quick && !cur.Config.Quick
	if !judged {
		c.Notes = append(c.Notes, fmt.Sprintf("shown for information only: mode %s before, %s now (a quick run is not for numbers)", mode(old), mode(cur)))
	}
	add := func(figure, unit string, o, n Stat, higher, gated bool) {
		if !o.Valid() || !n.Valid() || o.Median == 0 || math.IsNaN(o.Median) || math.IsNaN(n.Median) {
			return
		}
		c.Changes = append(c.Changes, Change{
			Figure: figure, Unit: unit, Old: o, New: n,
			Delta: (n.Median - o.Median) / math.Abs(o.Median), HigherIsBetter: higher, Gated: gated && judged,
		})
	}
	for _, d := range cur.Dataplanes {
		od := old.Row(d.Key)
		if d.Status != StatusMeasured || od == nil || od.Status != StatusMeasured {
			continue
		}
		for _, m := range DataplaneMetrics {
			if d.Key != ReferenceKey {
				add(d.Key+" "+m.Title+" vs reference", "×ref", od.Ratios[m.Key], d.Ratios[m.Key], m.HigherIsBetter, true)
			}
			add(d.Key+" "+m.Title, m.Unit, od.Metrics[m.Key], d.Metrics[m.Key], m.HigherIsBetter, false)
		}
	}
	cpGated := old.Host.CPUs == cur.Host.CPUs
	if !cpGated && judged {
		c.Notes = append(c.Notes, fmt.Sprintf("control plane shown for information only: %d CPUs before, %d now", old.Host.CPUs, cur.Host.CPUs))
	}
	if cur.ControlPlane != nil && old.ControlPlane != nil {
		largest := 0
		for _, l := range cur.ControlPlane.Levels {
			if old.ControlPlane.level(l.Live) != nil {
				largest = max(largest, l.Live)
			}
		}
		for _, l := range cur.ControlPlane.Levels {
			ol := old.ControlPlane.level(l.Live)
			if ol == nil {
				continue
			}
			p := fmt.Sprintf("control plane %d live", l.Live)
			for _, f := range []struct {
				name   string
				unit   string
				o, n   Stat
				higher bool
			}{
				{"setup p50", "ms", ol.SetupP50, l.SetupP50, false},
				{"setup p99", "ms", ol.SetupP99, l.SetupP99, false},
				{"build rate", "conn/s", ol.BuildRate, l.BuildRate, true},
				{"close p99", "ms", ol.CloseP99, l.CloseP99, false},
				{"close rate", "conn/s", ol.CloseRate, l.CloseRate, true},
				{"RSS", "KiB", ol.RSSKiB, l.RSSKiB, false},
			} {
				add(p+" "+f.name, f.unit, f.o, f.n, f.higher, cpGated)
			}
			// Per-connection memory means something only with many
			// connections (docs/benchmarks.md).
			if l.Live == largest {
				add(p+" RSS per connection", "KiB", ol.RSSPerConnKiB, l.RSSPerConnKiB, false, cpGated)
			}
		}
	}
	return c
}

func mode(r *Results) string {
	if r.Config.Quick {
		return "quick"
	}
	return "full"
}

// WriteMarkdown writes the comparison for a CI job summary: the rule, then
// every figure that moved by more than the threshold.
func (c *Comparison) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	pct := c.Threshold * 100
	fmt.Fprintf(&b, "## Against the previous run\n\nPrevious: nsmfwd %s, %s, mode %s, %d CPUs. This run: nsmfwd %s, %s, mode %s, %d CPUs.\n\n",
		orDash(c.Old.Host.Commit), c.Old.Started.UTC().Format("2006-01-02 15:04 UTC"), mode(c.Old), c.Old.Host.CPUs,
		orDash(c.New.Host.Commit), c.New.Started.UTC().Format("2006-01-02 15:04 UTC"), mode(c.New), c.New.Host.CPUs)
	fmt.Fprintf(&b, "A figure regresses when its median is worse than the previous run's by more than %.0f %% and every round of this run is worse than every round of the previous one. "+
		"Dataplane rows are judged by their ratio to the reference measured in the same round; their absolute figures depend on the runner's hardware and are shown for information. "+
		"Control-plane figures are judged when both runs had the same CPU count. Nothing is judged against or in a quick run.\n\n", pct)
	for _, n := range c.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if len(c.Notes) > 0 {
		b.WriteString("\n")
	}
	var moved []Change
	for _, ch := range c.Changes {
		if math.Abs(ch.Delta) > c.Threshold {
			moved = append(moved, ch)
		}
	}
	reg := c.Regressions()
	fmt.Fprintf(&b, "%d figures compared; regressions beyond %.0f %%: **%d**.\n\n", len(c.Changes), pct, len(reg))
	if len(moved) == 0 {
		fmt.Fprintf(&b, "No figure moved by more than %.0f %%.\n", pct)
	} else {
		b.WriteString("| figure | previous | this run | change | verdict |\n|---|---:|---:|---:|---|\n")
		for _, ch := range moved {
			fmt.Fprintf(&b, "| %s (%s) | %s | %s | %+.1f %% | %s |\n", ch.Figure, ch.Unit, stat(ch.Old), stat(ch.New), ch.Delta*100, c.verdict(ch))
		}
	}
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("write comparison: %w", err)
	}
	return nil
}

func (c *Comparison) verdict(ch Change) string {
	switch {
	case ch.Worse(c.Threshold) && ch.Gated:
		return "**regression**"
	case ch.Worse(c.Threshold):
		return "worse (information)"
	case ch.Better(c.Threshold):
		return "better"
	default:
		return "within the rounds' spread"
	}
}

func stat(s Stat) string {
	if s.N > 1 {
		return fmt.Sprintf("%.3g (%.3g–%.3g)", s.Median, s.Min, s.Max)
	}
	return fmt.Sprintf("%.3g", s.Median)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// RegressionError is returned by the compare command when figures
// regressed; its exit status (3) tells CI a regression from a failure to
// compare.
type RegressionError struct {
	N         int
	Threshold float64
}

func (e *RegressionError) Error() string {
	return fmt.Sprintf("%d figures regressed by more than %.0f %%", e.N, e.Threshold*100)
}

// ExitCode is the process exit status for the error.
func (*RegressionError) ExitCode() int { return 3 }
