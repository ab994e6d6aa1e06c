package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sample returns results as a full run produces them: two measured rows,
// skipped ones and a control-plane series.
func sample() *Results {
	r := &Results{
		Schema: SchemaVersion, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Seconds: 420,
		Host:    Host{CPUs: 2, Kernel: "6.18", GoVersion: "go1.26", Iperf3: "iperf 3.12", Note: "VPP compiling"},
		Config:  Config{Rounds: 3, TrafficSeconds: 5, PingCount: 2000, PingInterval: "1ms", ClientCPU: 0, ServerCPU: 1, CPRounds: 3, CPProbes: 50, CPConcurrency: 4, TrafficTool: "iperf3", LatencyTool: "nsmbench"},
		Metrics: DataplaneMetrics,
		Dataplanes: []DataplaneResult{
			{Key: ReferenceKey, Title: "reference", Status: StatusMeasured, Metrics: map[string]Stat{
				MetricUDP64: Summarize([]float64{0.10, 0.12, 0.11}), MetricUDP1500: Summarize([]float64{1, 1.1, 1.2}),
				MetricTCP: Summarize([]float64{6, 6.5, 7}), MetricRTTP50: Summarize([]float64{100, 110, 105}), MetricRTTP99: Summarize([]float64{180, 190, 200}),
			}},
			{Key: EBPFKey, Title: "kernel eBPF", Status: StatusMeasured, Metrics: map[string]Stat{
				MetricUDP64: Summarize([]float64{0.2, 0.18, 0.22}), MetricUDP1500: Summarize([]float64{1.5, 1.6, 1.7}),
				MetricTCP: Summarize([]float64{7, 7.5, 8}), MetricRTTP50: Summarize([]float64{90, 95, 92}), MetricRTTP99: Summarize([]float64{150, 160, 170}),
			}},
			{Key: VPPAFPacketKey, Title: "VPP af_packet", Status: StatusSkipped, Reason: "VPP dataplane not implemented yet"},
			{Key: VPPAFXDPKey, Title: "VPP AF_XDP | x", Status: StatusSkipped, Reason: "VPP dataplane not implemented yet"},
		},
		ControlPlane: &ControlPlaneResult{Status: StatusMeasured},
		VPPSmall: &VPPSmallResult{Status: StatusMeasured,
			Bursts: []VPPBurst{
				{Concurrent: 1, Requests: 3, SetupP50: Summarize([]float64{90, 95, 100}), SetupP99: Summarize([]float64{90, 95, 100})},
				{Concurrent: 30, Requests: 90, SetupP50: Summarize([]float64{400, 420, 410}), SetupP99: Summarize([]float64{800, 900, 1100})},
				{Concurrent: 30, IPv6: true, Requests: 30, Failed: 12, SetupP50: Summarize([]float64{3000}), SetupP99: Summarize([]float64{15000})},
			},
			Memory: []VPPMemory{{Live: 10, RSSKiB: Summarize([]float64{348000}), PerConnKiB: Summarize([]float64{3140})},
				{Live: 100, RSSKiB: Summarize([]float64{625000}), PerConnKiB: Summarize([]float64{3084})}},
		},
	}
	for _, n := range []int{1, 10, 100, 1000} {
		f := float64(n)
		r.ControlPlane.Levels = append(r.ControlPlane.Levels, CPLevel{
			Live:     n,
			SetupP50: Summarize([]float64{5 + f/1000, 6, 5.5}), SetupP99: Summarize([]float64{20 + f/100, 21, 22}),
			BuildP50: Summarize([]float64{8}), BuildP99: Summarize([]float64{30}), BuildRate: Summarize([]float64{100}),
			CloseP50: Summarize([]float64{4}), CloseP99: Summarize([]float64{12}), CloseRate: Summarize([]float64{150}),
			RSSKiB: Summarize([]float64{20480 + 40*f}), RSSPerConnKiB: Summarize([]float64{40, 42, 44}),
		})
	}
	r.ComputeRatios()
	r.Targets = EvaluateTargets(r)
	return r
}

func TestComputeRatios(t *testing.T) {
	r := sample()
	rt := r.Row(EBPFKey).Ratios[MetricUDP64]
	// Round by round: 0.2/0.10, 0.18/0.12, 0.22/0.11.
	if rt.N != 3 || rt.Min != 1.5 || rt.Max != 2 || rt.Median != 2 {
		t.Fatalf("ratio %+v", rt)
	}
	if r.Row(VPPAFXDPKey).Ratios != nil {
		t.Fatal("skipped row has ratios")
	}
}

func TestEvaluateTargets(t *testing.T) {
	r := sample()
	want := map[string]string{
		"setup p50 at 1,000 live":                                       "yes",
		"setup p99 at 1,000 live":                                       "yes",
		"setup p99 at 1,000 / at 10":                                    "yes",
		"forwarder memory per connection":                               "yes",
		"eBPF cross-connect vs reference, 64 B pps":                     "yes",
		"VPP AF_XDP vs VPP af_packet, 64 B pps":                         "not measured",
		"VPP af_packet, default scheduling vs busy polling, TCP":        "not measured",
		"VPP af_packet, default scheduling vs busy polling, UDP 1500 B": "not measured",
		"VPP: 30 concurrent Requests":                                   "no", // the worst round's p99 is 1.1 s
		"VPP memory per connection at 100":                              "yes",
	}
	for _, tg := range r.Targets {
		got := "not measured"
		if tg.Met != nil {
			got = map[bool]string{true: "yes", false: "no"}[*tg.Met]
		}
		if want[tg.Name] != got {
			t.Errorf("%s: %s, want %s (%+v)", tg.Name, got, want[tg.Name], tg)
		}
		delete(want, tg.Name)
	}
	if len(want) > 0 {
		t.Errorf("targets missing: %v", want)
	}
	// The same run without the 1,000 level: nothing to compare with.
	r.ControlPlane.Levels = r.ControlPlane.Levels[:3]
	for _, tg := range EvaluateTargets(r)[:4] {
		if tg.Met != nil || !strings.Contains(tg.Note, "1000 live") {
			t.Errorf("%s: %+v", tg.Name, tg)
		}
	}
}

func TestMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := sample().WriteMarkdown(&b, MarkdownOptions{ThroughputSVG: "t.svg", SetupSVG: "s.svg"}); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"| reference | measured | 0.110 (0.100–0.120) | 1.10 (1.00–1.20) | 6.50 (6.00–7.00) | 105 (100–110) | 190 (180–200) |",
		"| kernel eBPF | measured | 0.200 (0.180–0.220) ×2.00 |",
		`| VPP AF_XDP \| x | skipped: VPP dataplane not implemented yet | — |`,
		"| 1000 | 6.00 (5.50–6.00) | 22.0 (21.0–30.0) |",
		"| 42.0 (40.0–44.0) |",
		"![throughput by dataplane](t.svg)",
		"![setup latency against live connections](s.svg)",
		"| eBPF cross-connect vs reference, 64 B pps | ≥ 1.5× | 2.00× | yes |",
		"Note: VPP compiling.",
		"## VPP on a small node",
		"| 30 | on | 12 of 30 |",
		"| 100 | 610.4 | 3084 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

// The scheduling targets compare the default af_packet row with the
// busy-polling one, round by round.
func TestSchedulingTargets(t *testing.T) {
	r := sample()
	row := func(key string, tcp, udp []float64) DataplaneResult {
		return DataplaneResult{Key: key, Status: StatusMeasured,
			Metrics: map[string]Stat{MetricTCP: Summarize(tcp), MetricUDP1500: Summarize(udp)}}
	}
	r.Dataplanes = append(r.Dataplanes[:2], row(VPPAFPacketKey, []float64{2.7, 2.8, 2.9}, []float64{1, 1, 1}),
		row(VPPAFPacketBusyKey, []float64{3, 3, 3}, []float64{2, 2, 2}))
	got := map[string]string{}
	for _, tg := range EvaluateTargets(r) {
		if tg.Met != nil {
			got[tg.Name] = fmt.Sprintf("%s %v", tg.Measured, *tg.Met)
		}
	}
	if g := got["VPP af_packet, default scheduling vs busy polling, TCP"]; g != "0.93× true" {
		t.Errorf("TCP: %q", g)
	}
	if g := got["VPP af_packet, default scheduling vs busy polling, UDP 1500 B"]; g != "0.50× false" {
		t.Errorf("UDP: %q", g)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := sample()
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"setup_p99_ms"`) {
		t.Fatal("JSON keys changed")
	}
	got, err := ReadJSON(&b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Row(EBPFKey).Ratios[MetricUDP64].Median != 2 || got.ControlPlane.Levels[3].Live != 1000 || len(got.Targets) != 10 || got.VPPSmall.burst(30, true).Failed != 12 {
		t.Fatalf("round trip lost data: %+v", got)
	}
}

func TestBenchstatFormat(t *testing.T) {
	var b bytes.Buffer
	if err := sample().WriteBenchstat(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if n := strings.Count(out, "BenchmarkDataplane/dp="+EBPFKey+" 1 "); n != 3 {
		t.Fatalf("%d lines for the eBPF row, want one per round:\n%s", n, out)
	}
	if !strings.Contains(out, "BenchmarkDataplane/dp=reference 1 0.1 udp64-Mpps 1 udp1500-Gbps 6 tcp-Gbps 100 rtt-p50-us 180 rtt-p99-us\n") {
		t.Fatalf("unexpected line format:\n%s", out)
	}
	if !strings.Contains(out, "BenchmarkControlPlane/live=1000 1 6 setup-p50-ms") {
		t.Fatalf("no control-plane lines:\n%s", out)
	}
	if strings.Contains(out, VPPAFPacketKey) {
		t.Fatal("skipped rows must not produce benchmark lines")
	}
}

// wellFormed checks that s is well-formed XML with an svg root.
func wellFormed(t *testing.T, s string) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("malformed SVG: %v\n%s", err, s)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q", root)
	}
}

func TestSVG(t *testing.T) {
	r := sample()
	var tp, sl bytes.Buffer
	if err := r.ThroughputSVG(&tp); err != nil {
		t.Fatal(err)
	}
	if err := r.SetupLatencySVG(&sl); err != nil {
		t.Fatal(err)
	}
	wellFormed(t, tp.String())
	wellFormed(t, sl.String())
	for _, want := range []string{"kernel eBPF", "VPP AF_XDP | x", "skipped", "×2.00", "TCP (Gbit/s)"} {
		if !strings.Contains(tp.String(), want) {
			t.Errorf("throughput plot lacks %q", want)
		}
	}
	for _, want := range []string{"setup p99", "1000", "<polyline", "target p99 50 ms"} {
		if !strings.Contains(sl.String(), want) {
			t.Errorf("setup plot lacks %q", want)
		}
	}
	// No control plane: still a valid picture saying so.
	r.ControlPlane = nil
	var empty bytes.Buffer
	if err := r.SetupLatencySVG(&empty); err != nil {
		t.Fatal(err)
	}
	wellFormed(t, empty.String())
}

func TestNiceMax(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.7: 1, 1.3: 2, 2.1: 2.5, 3: 5, 7: 10, 42: 50, 180: 200} {
		if got := niceMax(in); got != want {
			t.Errorf("niceMax(%v) = %v, want %v", in, got, want)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	if err := sample().WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.json", "results.md", "results.bench.txt", ThroughputPlotFile, SetupPlotFile} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
