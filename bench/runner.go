package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Options configure a whole harness run.
type Options struct {
	Quick bool
	// Rounds of traffic over every topology, after one warm-up round.
	Rounds  int
	Traffic TrafficOptions
	CP      CPOptions
	// VPPSmall is the VPP small-node series (needs VPP).
	VPPSmall VPPSmallOptions
	// Note is recorded with the host (BENCH_NOTE).
	Note string
}

// DefaultOptions returns the full run's defaults, or the quick mode's.
func DefaultOptions(quick bool) Options {
	if quick {
		return Options{
			Quick: true, Rounds: 1,
			Traffic:  TrafficOptions{Seconds: 1, PingCount: 200, PingInterval: time.Millisecond},
			CP:       CPOptions{Levels: []int{1, 10, 50}, Rounds: 1, Probes: 5, Concurrency: 4},
			VPPSmall: VPPSmallOptions{Bursts: []int{1, 10}, Rounds: 1, Live: []int{10}, Deadline: 15 * time.Second},
		}
	}
	return Options{
		Rounds:  3,
		Traffic: TrafficOptions{Seconds: 5, PingCount: 2000, PingInterval: time.Millisecond},
		// The 1,000 level takes most of the budget (about 80 s a round on
		// 2 cores, setup slowing down as links accumulate): two rounds of it.
		CP: CPOptions{Levels: []int{1, 10, 100, 1000}, Rounds: 3, MaxLevelRounds: 2, Probes: 50, Concurrency: 4},
		// NSM's clients give a Request 15 s.
		VPPSmall: VPPSmallOptions{Bursts: []int{1, 10, 30}, Rounds: 3, Live: []int{10, 100}, IPv6Burst: 30, Deadline: 15 * time.Second},
	}
}

// Run measures every topology and the control plane. Rows that cannot be
// measured are reported with the reason; a failing row does not stop the
// others.
func Run(ctx context.Context, e *Env, o Options) *Results {
	started := time.Now()
	r := &Results{
		Schema:  SchemaVersion,
		Started: started,
		Host:    hostInfo(ctx, o.Note),
		Metrics: DataplaneMetrics,
		Config: Config{
			Quick: o.Quick, Rounds: o.Rounds, TrafficSeconds: float64(o.Traffic.Seconds),
			PingCount: o.Traffic.PingCount, PingInterval: o.Traffic.PingInterval.String(),
			ClientCPU: e.ClientCPU, ServerCPU: e.ServerCPU,
			CPLevels: o.CP.Levels, CPRounds: o.CP.Rounds, CPMaxRounds: min(o.CP.Rounds, cmp.Or(o.CP.MaxLevelRounds, o.CP.Rounds)), CPProbes: o.CP.Probes, CPConcurrency: o.CP.Concurrency,
			TrafficTool: "iperf3 (Debian package)",
			LatencyTool: fmt.Sprintf("nsmbench ping/pong (UDP, %d B payload)", PingPongSize),
		},
	}
	defer func() { r.Seconds = time.Since(started).Seconds() }()

	if os.Geteuid() != 0 {
		reason := fmt.Sprintf("needs root to create namespaces (uid %d)", os.Geteuid())
		for _, t := range Topologies() {
			r.Dataplanes = append(r.Dataplanes, DataplaneResult{Key: t.Key(), Title: t.Title(), Status: StatusSkipped, Reason: reason})
		}
		r.ControlPlane = &ControlPlaneResult{Status: StatusSkipped, Reason: reason}
		r.VPPSmall = &VPPSmallResult{Status: StatusSkipped, Reason: reason}
		r.Targets = EvaluateTargets(r)
		return r
	}

	r.Dataplanes = runTraffic(ctx, e, o)
	r.ComputeRatios()

	e.Log.InfoContext(ctx, "control plane series", "levels", o.CP.Levels, "rounds", o.CP.Rounds)
	cp, err := RunControlPlane(ctx, e, o.CP)
	if err != nil {
		e.Log.ErrorContext(ctx, "control plane series failed", "err", err)
		cp = &ControlPlaneResult{Status: StatusFailed, Reason: err.Error()}
	}
	r.ControlPlane = cp

	e.Log.InfoContext(ctx, "VPP small-node series", "bursts", o.VPPSmall.Bursts, "live", o.VPPSmall.Live)
	vs, err := RunVPPSmall(ctx, e, o.VPPSmall)
	if err != nil {
		e.Log.ErrorContext(ctx, "VPP small-node series failed", "err", err)
		vs = &VPPSmallResult{Status: StatusFailed, Reason: err.Error()}
	}
	r.VPPSmall = vs
	r.Targets = EvaluateTargets(r)
	return r
}

// active is a topology that was set up.
type active struct {
	t        Topology
	path     Path
	teardown func() error
	runs     map[string][]float64
	err      error
}

func runTraffic(ctx context.Context, e *Env, o Options) []DataplaneResult {
	var rows []DataplaneResult
	var act []*active
	iperfMissing := ""
	if _, err := exec.LookPath("iperf3"); err != nil {
		iperfMissing = "iperf3 not found (apt-get install iperf3)"
	}
	for _, t := range Topologies() {
		row := DataplaneResult{Key: t.Key(), Title: t.Title()}
		reason := t.Unavailable()
		if reason == "" {
			reason = iperfMissing
		}
		if reason != "" {
			row.Status, row.Reason = StatusSkipped, reason
			rows = append(rows, row)
			continue
		}
		e.Log.InfoContext(ctx, "setting up", "dataplane", t.Key())
		p, teardown, err := t.Setup(ctx, e)
		if err != nil {
			row.Status, row.Reason = StatusFailed, "setup: "+err.Error()
			rows = append(rows, row)
			continue
		}
		act = append(act, &active{t: t, path: p, teardown: teardown, runs: make(map[string][]float64)})
		rows = append(rows, row)
	}
	// Warm-up round: short, discarded.
	warm := TrafficOptions{Seconds: 1, PingCount: 50, PingInterval: time.Millisecond}
	for _, a := range act {
		if _, err := e.measureTraffic(ctx, a.path, a.t.Key()+"-warmup", warm); err != nil {
			a.err = fmt.Errorf("warm-up: %w", err)
		}
	}
	// Rounds interleave the topologies so that every round has its own
	// reference.
	for round := 1; round <= o.Rounds; round++ {
		for _, a := range act {
			if a.err != nil || ctx.Err() != nil {
				continue
			}
			m, err := e.measureTraffic(ctx, a.path, a.t.Key(), o.Traffic)
			if err != nil {
				a.err = fmt.Errorf("round %d: %w", round, err)
				continue
			}
			e.Log.InfoContext(ctx, "traffic", "dataplane", a.t.Key(), "round", round,
				"udp64_mpps", m[MetricUDP64], "udp1500_gbps", m[MetricUDP1500], "tcp_gbps", m[MetricTCP],
				"rtt_p50_us", m[MetricRTTP50], "rtt_p99_us", m[MetricRTTP99])
			for k, v := range m {
				a.runs[k] = append(a.runs[k], v)
			}
		}
	}
	for _, a := range act {
		if err := a.teardown(); err != nil {
			e.Log.WarnContext(ctx, "teardown", "dataplane", a.t.Key(), "err", err)
		}
		for i := range rows {
			if rows[i].Key != a.t.Key() {
				continue
			}
			if a.err == nil && ctx.Err() != nil {
				a.err = ctx.Err()
			}
			if a.err != nil {
				rows[i].Status, rows[i].Reason = StatusFailed, a.err.Error()
				continue
			}
			rows[i].Status = StatusMeasured
			rows[i].Metrics = make(map[string]Stat)
			for k, v := range a.runs {
				rows[i].Metrics[k] = Summarize(v)
			}
		}
	}
	return rows
}

func hostInfo(ctx context.Context, note string) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Note: note}
	if out, err := run(ctx, "uname", "-r"); err == nil {
		h.Kernel = strings.TrimSpace(out)
	}
	if out, err := run(ctx, "git", "describe", "--always", "--dirty"); err == nil {
		h.Commit = strings.TrimSpace(out)
	}
	if out, err := run(ctx, "iperf3", "--version"); err == nil {
		h.Iperf3, _, _ = strings.Cut(strings.TrimSpace(out), " (")
	} else {
		h.Iperf3 = "iperf3 not installed"
	}
	return h
}
