package bench

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"strings"
)

// MarkdownOptions control WriteMarkdown.
type MarkdownOptions struct {
	// ThroughputSVG and SetupSVG, when set, are linked as images.
	ThroughputSVG, SetupSVG string
}

// FormatStat renders s as "median (min–max)" with digits decimals, or "—".
func FormatStat(s Stat, digits int) string {
	if !s.Valid() {
		return "—"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmt.Sprintf("%.*f", digits, s.Median)
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", digits, s.Median, digits, s.Min, digits, s.Max)
}

// digitsFor picks decimals so that a figure shows about three significant
// digits.
func digitsFor(v float64) int {
	switch a := math.Abs(v); {
	case a == 0 || a >= 100:
		return 0
	case a >= 10:
		return 1
	case a >= 1:
		return 2
	}
	return 3
}

func formatAuto(s Stat) string { return FormatStat(s, digitsFor(s.Median)) }

// WriteMarkdown renders r as Markdown: the dataplane table with ratios, the
// control-plane table, the targets and the run's configuration.
func (r *Results) WriteMarkdown(w io.Writer, o MarkdownOptions) error {
	var b strings.Builder
	mode := "full"
	if r.Config.Quick {
		mode = "quick (BENCH_QUICK=1: for keeping the harness working, not for numbers)"
	}
	fmt.Fprintf(&b, "# nsmfwd benchmark results\n\n")
	fmt.Fprintf(&b, "Run %s, %.0f s, mode %s, nsmfwd %s. Host: %d CPUs, kernel %s, %s, %s.",
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Seconds, mode, cmp.Or(r.Host.Commit, "(commit unknown)"),
		r.Host.CPUs, r.Host.Kernel, r.Host.GoVersion, r.Host.Iperf3)
	if r.Host.Note != "" {
		fmt.Fprintf(&b, " Note: %s.", strings.TrimSuffix(r.Host.Note, "."))
	}
	b.WriteString("\n\n")
	fmt.Fprintf(&b, "Each figure is the median of %d rounds after a warm-up, with the min–max over the rounds in brackets; "+
		"×N is the ratio against the reference measured in the same round (median over rounds). "+
		"Traffic: %s, client pinned to CPU %d, server to CPU %d, %.0f s per test; latency: %s, %d round trips %s apart.\n\n",
		r.Config.Rounds, r.Config.TrafficTool, r.Config.ClientCPU, r.Config.ServerCPU, r.Config.TrafficSeconds,
		r.Config.LatencyTool, r.Config.PingCount, r.Config.PingInterval)

	b.WriteString("## Dataplanes\n\n| dataplane | status |")
	for _, m := range DataplaneMetrics {
		fmt.Fprintf(&b, " %s (%s) |", m.Title, m.Unit)
	}
	b.WriteString("\n|---|---|")
	for range DataplaneMetrics {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, d := range r.Dataplanes {
		status := d.Status
		if d.Reason != "" {
			status += ": " + d.Reason
		}
		fmt.Fprintf(&b, "| %s | %s |", escapePipes(d.Title), escapePipes(status))
		for _, m := range DataplaneMetrics {
			s, ok := d.Metrics[m.Key]
			if !ok {
				b.WriteString(" — |")
				continue
			}
			cell := formatAuto(s)
			if rt, ok := d.Ratios[m.Key]; ok && d.Key != ReferenceKey {
				cell += fmt.Sprintf(" ×%.2f", rt.Median)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	if o.ThroughputSVG != "" {
		fmt.Fprintf(&b, "![throughput by dataplane](%s)\n\n", o.ThroughputSVG)
	}

	b.WriteString("## Control plane\n\n")
	cp := r.ControlPlane
	switch {
	case cp == nil:
		b.WriteString("Not run.\n\n")
	case cp.Status != StatusMeasured:
		fmt.Fprintf(&b, "%s: %s\n\n", cp.Status, cp.Reason)
	default:
		fmt.Fprintf(&b, "nsmfwd (kernel dataplane) as a separate process, driven over its unix socket with controlplane/nsc; "+
			"`nse` as the next hop. %d rounds (%d of the largest level), a fresh forwarder for every level of every round. "+
			"Setup = one Request at a time with the given number of connections live (%d probes, each closed before the next); "+
			"build and teardown = the Requests and Closes that brought the count up and down, %d at a time. "+
			"Latencies in ms, memory = forwarder VmRSS. A failed Request or Close is retried (at most %d attempts) and counted.\n\n", r.Config.CPRounds, r.Config.CPMaxRounds, r.Config.CPProbes, r.Config.CPConcurrency, maxAttempts)
		b.WriteString("| live conns | setup p50 | setup p99 | build p50 | build p99 | build rate (conn/s) | close p50 | close p99 | close rate (conn/s) | RSS (MiB) | RSS / conn (KiB) | failed, retried |\n")
		b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, l := range cp.Levels {
			fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", l.Live,
				formatAuto(l.SetupP50), formatAuto(l.SetupP99), formatAuto(l.BuildP50), formatAuto(l.BuildP99), formatAuto(l.BuildRate),
				formatAuto(l.CloseP50), formatAuto(l.CloseP99), formatAuto(l.CloseRate),
				FormatStat(scale(l.RSSKiB, 1.0/1024), 1), formatAuto(l.RSSPerConnKiB), FormatStat(l.Failures, 0))
		}
		b.WriteString("\n")
		if o.SetupSVG != "" {
			fmt.Fprintf(&b, "![setup latency against live connections](%s)\n\n", o.SetupSVG)
		}
	}

	writeVPPSmall(&b, r.VPPSmall)

	b.WriteString("## Targets\n\nReported, not asserted.\n\n| target | want | measured | met |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		met := "not measured"
		if t.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*t.Met]
		}
		measured := t.Measured
		if t.Note != "" {
			measured += " (" + t.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Want, escapePipes(measured), met)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func scale(s Stat, f float64) Stat {
	out := s
	out.Median, out.Mean, out.Stddev, out.Min, out.Max = s.Median*f, s.Mean*f, s.Stddev*f, s.Min*f, s.Max*f
	out.Runs = make([]float64, len(s.Runs))
	for i, v := range s.Runs {
		out.Runs[i] = v * f
	}
	return out
}

func escapePipes(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// writeVPPSmall renders the VPP small-node series.
func writeVPPSmall(b *strings.Builder, vs *VPPSmallResult) {
	b.WriteString("## VPP on a small node\n\n")
	switch {
	case vs == nil:
		b.WriteString("Not run.\n\n")
		return
	case vs.Status != StatusMeasured:
		fmt.Fprintf(b, "%s: %s\n\n", vs.Status, vs.Reason)
		return
	}
	b.WriteString("nsmfwd with the VPP dataplane and its defaults for a VPP sharing the node's CPUs (KERNEL sides by veth + af_packet, " +
		"8 KiB rx blocks, interfaces in interrupt mode, no poll sleep), driven over its unix socket; `nse` as the next hop. " +
		"A burst is that many Requests sent at the same instant, each once, with NSM's 15 s deadline; latencies in ms " +
		"(per-round percentiles, median and range over the rounds). Workloads IPv4-only unless marked, because of VPP 25.10's af_packet livelock " +
		"(docs/operations.md).\n\n")
	b.WriteString("| concurrent Requests | IPv6 | failed | setup p50 | setup p99 |\n|---:|---|---:|---:|---:|\n")
	for _, x := range vs.Bursts {
		fmt.Fprintf(b, "| %d | %s | %d of %d | %s | %s |\n", x.Concurrent, map[bool]string{true: "on", false: "off"}[x.IPv6],
			x.Failed, x.Requests, formatAuto(x.SetupP50), formatAuto(x.SetupP99))
	}
	b.WriteString("\n| live conns | VPP RSS (MiB) | VPP RSS / conn (KiB) |\n|---:|---:|---:|\n")
	for _, m := range vs.Memory {
		fmt.Fprintf(b, "| %d | %s | %s |\n", m.Live, FormatStat(scale(m.RSSKiB, 1.0/1024), 1), formatAuto(m.PerConnKiB))
	}
	b.WriteString("\n")
}
