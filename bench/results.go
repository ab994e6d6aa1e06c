package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// SchemaVersion is the version of the JSON layout written by WriteJSON.
const SchemaVersion = 1

// Row statuses.
const (
	StatusMeasured = "measured"
	StatusSkipped  = "skipped"
	StatusFailed   = "failed"
)

// Metric describes one dataplane figure.
type Metric struct {
	Key   string `json:"key"`
	Title string `json:"title"`
	Unit  string `json:"unit"`
	// HigherIsBetter tells how to read the ratio against the reference.
	HigherIsBetter bool `json:"higher_is_better"`
}

// Dataplane metric keys.
const (
	MetricUDP64    = "udp64_mpps"
	MetricUDP1500  = "udp1500_gbps"
	MetricTCP      = "tcp_gbps"
	MetricRTTP50   = "rtt_p50_us"
	MetricRTTP99   = "rtt_p99_us"
	ReferenceKey   = "reference"
	EBPFKey        = "kernel-ebpf"
	VPPAFPacketKey = "vpp-af-packet"
	VPPAFXDPKey    = "vpp-af-xdp"
	// VPPAFPacketGSOKey is af_packet with rings large enough for GSO.
	VPPAFPacketGSOKey = "vpp-af-packet-gso"
	// VPPAFPacketBusyKey is af_packet with the interfaces polled (VPP
	// busy-polling), the baseline of the scheduling defaults' cost.
	VPPAFPacketBusyKey = "vpp-af-packet-busy"
	// VPPAFPacketSleepKey is af_packet with VPP's poll sleep of 100 µs,
	// the other way to keep VPP from holding a core.
	VPPAFPacketSleepKey = "vpp-af-packet-sleep"
)

// DataplaneMetrics lists the dataplane figures in table order.
var DataplaneMetrics = []Metric{
	{MetricUDP64, "UDP 64 B rx", "Mpps", true},
	{MetricUDP1500, "UDP 1472 B rx", "Gbit/s", true},
	{MetricTCP, "TCP", "Gbit/s", true},
	{MetricRTTP50, "RTT p50", "µs", false},
	{MetricRTTP99, "RTT p99", "µs", false},
}

// Results is everything one harness run measured.
type Results struct {
	Schema       int                 `json:"schema"`
	Started      time.Time           `json:"started"`
	Seconds      float64             `json:"seconds"`
	Host         Host                `json:"host"`
	Config       Config              `json:"config"`
	Metrics      []Metric            `json:"metrics"`
	Dataplanes   []DataplaneResult   `json:"dataplanes"`
	ControlPlane *ControlPlaneResult `json:"control_plane"`
	// VPPSmall is the VPP small-node series (absent from older results).
	VPPSmall *VPPSmallResult `json:"vpp_small_node,omitempty"`
	Targets  []Target        `json:"targets"`
}

// Host describes the machine the run happened on.
type Host struct {
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Iperf3    string `json:"iperf3"`
	// Commit is the checked-out nsmfwd commit (git describe --dirty).
	Commit string `json:"commit,omitempty"`
	// Note is free text from BENCH_NOTE (e.g. "VPP compiling in the background").
	Note string `json:"note,omitempty"`
}

// Config is how the run was set up.
type Config struct {
	Quick          bool    `json:"quick"`
	Rounds         int     `json:"rounds"`
	TrafficSeconds float64 `json:"traffic_seconds"`
	PingCount      int     `json:"ping_count"`
	PingInterval   string  `json:"ping_interval"`
	ClientCPU      int     `json:"client_cpu"`
	ServerCPU      int     `json:"server_cpu"`
	CPLevels       []int   `json:"cp_levels"`
	CPRounds       int     `json:"cp_rounds"`
	CPMaxRounds    int     `json:"cp_largest_level_rounds"`
	CPProbes       int     `json:"cp_probes"`
	CPConcurrency  int     `json:"cp_concurrency"`
	TrafficTool    string  `json:"traffic_tool"`
	LatencyTool    string  `json:"latency_tool"`
}

// DataplaneResult is one row of the dataplane table.
type DataplaneResult struct {
	Key    string `json:"key"`
	Title  string `json:"title"`
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Metrics by Metric.Key; each Stat has one run per round.
	Metrics map[string]Stat `json:"metrics,omitempty"`
	// Ratios against the reference row, round by round.
	Ratios map[string]Stat `json:"ratios,omitempty"`
}

// ControlPlaneResult is the control-plane series.
type ControlPlaneResult struct {
	Status string    `json:"status"`
	Reason string    `json:"reason,omitempty"`
	Levels []CPLevel `json:"levels,omitempty"`
}

// CPLevel holds the control-plane figures at one count of live connections.
// Latencies are in milliseconds, memory in KiB.
type CPLevel struct {
	Live int `json:"live"`
	// SetupP50/P99: one Request at a time, with Live connections up.
	SetupP50 Stat `json:"setup_p50_ms"`
	SetupP99 Stat `json:"setup_p99_ms"`
	// BuildP50/P99 and BuildRate: the Requests that built the Live
	// connections, CPConcurrency at a time.
	BuildP50  Stat `json:"build_p50_ms"`
	BuildP99  Stat `json:"build_p99_ms"`
	BuildRate Stat `json:"build_rate_per_s"`
	// CloseP50/P99 and CloseRate: the Closes that tore the Live connections
	// down, CPConcurrency at a time.
	CloseP50  Stat `json:"close_p50_ms"`
	CloseP99  Stat `json:"close_p99_ms"`
	CloseRate Stat `json:"close_rate_per_s"`
	// RSSKiB is the forwarder's VmRSS with Live connections up;
	// RSSPerConnKiB its growth from the idle forwarder divided by Live.
	RSSKiB        Stat `json:"rss_kib"`
	RSSPerConnKiB Stat `json:"rss_per_conn_kib"`
	// Failures counts the Requests and Closes at this level that failed and
	// were retried (latencies are those of the successful attempts).
	Failures Stat `json:"failures"`
}

// Target is one figure the issue asks to report against.
type Target struct {
	Name     string `json:"name"`
	Want     string `json:"want"`
	Measured string `json:"measured"`
	// Met is nil when the figure could not be measured.
	Met  *bool  `json:"met"`
	Note string `json:"note,omitempty"`
}

// Row returns the dataplane row with key, or nil.
func (r *Results) Row(key string) *DataplaneResult {
	for i := range r.Dataplanes {
		if r.Dataplanes[i].Key == key {
			return &r.Dataplanes[i]
		}
	}
	return nil
}

// ComputeRatios fills every measured row's Ratios against the reference row.
func (r *Results) ComputeRatios() {
	ref := r.Row(ReferenceKey)
	if ref == nil || ref.Status != StatusMeasured {
		return
	}
	for i := range r.Dataplanes {
		d := &r.Dataplanes[i]
		if d.Status != StatusMeasured {
			continue
		}
		d.Ratios = make(map[string]Stat)
		for k, s := range d.Metrics {
			if rs, ok := ref.Metrics[k]; ok {
				if rt := Ratios(s, rs); rt.Valid() {
					d.Ratios[k] = rt
				}
			}
		}
	}
}

// WriteJSON writes r, indented, to w.
func (r *Results) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	return nil
}

// ReadJSON reads results written by WriteJSON.
func ReadJSON(rd io.Reader) (*Results, error) {
	var r Results
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("decode results: %w", err)
	}
	return &r, nil
}

// WriteBenchstat writes every run of every figure in the Go benchmark
// format, one line per run, so that two result files can be compared with
// benchstat (golang.org/x/perf/cmd/benchstat).
func (r *Results) WriteBenchstat(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "goos: linux\ngoarch: amd64\npkg: github.com/nsmfwd/nsmfwd/bench\ncpu: %d cores\n", r.Host.CPUs)
	// benchstat keys a figure by its unit, so every metric gets its own.
	unit := func(m Metric) string {
		u := strings.NewReplacer("µs", "us", "Gbit/s", "Gbps").Replace(m.Unit)
		prefix, _, _ := strings.Cut(m.Key, "_")
		if strings.HasPrefix(m.Key, "rtt_") {
			prefix = strings.Join(strings.Split(m.Key, "_")[:2], "-")
		}
		return prefix + "-" + u
	}
	for _, d := range r.Dataplanes {
		if d.Status != StatusMeasured {
			continue
		}
		n := 0
		for _, m := range DataplaneMetrics {
			n = max(n, len(d.Metrics[m.Key].Runs))
		}
		for i := range n {
			fmt.Fprintf(&b, "BenchmarkDataplane/dp=%s 1", d.Key)
			for _, m := range DataplaneMetrics {
				if runs := d.Metrics[m.Key].Runs; i < len(runs) {
					fmt.Fprintf(&b, " %g %s", runs[i], unit(m))
				}
			}
			b.WriteString("\n")
		}
	}
	if cp := r.ControlPlane; cp != nil {
		for _, l := range cp.Levels {
			for i := range len(l.SetupP50.Runs) {
				fmt.Fprintf(&b, "BenchmarkControlPlane/live=%d 1", l.Live)
				for _, f := range []struct {
					s    Stat
					unit string
				}{
					{l.SetupP50, "setup-p50-ms"}, {l.SetupP99, "setup-p99-ms"},
					{l.BuildRate, "conn/s"}, {l.CloseP50, "close-p50-ms"}, {l.CloseP99, "close-p99-ms"},
					{l.RSSPerConnKiB, "KiB/conn"},
				} {
					if i < len(f.s.Runs) {
						fmt.Fprintf(&b, " %g %s", f.s.Runs[i], f.unit)
					}
				}
				b.WriteString("\n")
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteFiles writes results.json, results.md, results.bench.txt and the two
// plots into dir.
func (r *Results) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	files := []struct {
		name  string
		write func(io.Writer) error
	}{
		{"results.json", r.WriteJSON},
		{"results.md", func(w io.Writer) error {
			return r.WriteMarkdown(w, MarkdownOptions{ThroughputSVG: ThroughputPlotFile, SetupSVG: SetupPlotFile})
		}},
		{"results.bench.txt", r.WriteBenchstat},
		{ThroughputPlotFile, r.ThroughputSVG},
		{SetupPlotFile, r.SetupLatencySVG},
	}
	var errs []error
	for _, f := range files {
		errs = append(errs, writeFile(filepath.Join(dir, f.name), f.write))
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(filepath.Clean(path))
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// Plot file names written next to the results.
const (
	ThroughputPlotFile = "throughput.svg"
	SetupPlotFile      = "setup-latency.svg"
)

// level returns the control-plane level with live connections, or nil.
func (cp *ControlPlaneResult) level(live int) *CPLevel {
	if cp == nil {
		return nil
	}
	i := slices.IndexFunc(cp.Levels, func(l CPLevel) bool { return l.Live == live })
	if i < 0 {
		return nil
	}
	return &cp.Levels[i]
}
