package bench

import (
	"strings"
	"testing"
)

// compareRun builds results with one nsmfwd row whose 64 B ratio and absolute
// figure are given (three rounds, ±2 %), and one control-plane level.
func compareRun(cpus int, quick bool, ratio, udp64, setupP99 float64) *Results {
	three := func(v float64) Stat { return Summarize([]float64{v * 0.98, v, v * 1.02}) }
	return &Results{
		Schema: SchemaVersion,
		Host:   Host{CPUs: cpus, Commit: "abc"},
		Config: Config{Quick: quick},
		Dataplanes: []DataplaneResult{
			{Key: ReferenceKey, Status: StatusMeasured, Metrics: map[string]Stat{MetricUDP64: three(0.3)}},
			{Key: EBPFKey, Status: StatusMeasured, Metrics: map[string]Stat{MetricUDP64: three(udp64)}, Ratios: map[string]Stat{MetricUDP64: three(ratio)}},
			{Key: VPPAFPacketKey, Status: StatusSkipped, Reason: "no VPP"},
		},
		ControlPlane: &ControlPlaneResult{Status: StatusMeasured, Levels: []CPLevel{{Live: 1000, SetupP99: three(setupP99)}}},
	}
}

func TestCompare(t *testing.T) {
	base := compareRun(2, false, 1.2, 0.36, 28)
	for _, tc := range []struct {
		name string
		cur  *Results
		want []string // figures flagged as regressions
	}{
		{"same", compareRun(2, false, 1.2, 0.36, 28), nil},
		{"within threshold", compareRun(2, false, 1.1, 0.33, 30), nil},
		// A slower runner: every absolute figure drops, the ratio holds.
		{"slower machine", compareRun(2, false, 1.2, 0.2, 28), nil},
		{"ratio regressed", compareRun(2, false, 0.9, 0.36, 28), []string{"kernel-ebpf UDP 64 B rx vs reference"}},
		{"control plane regressed", compareRun(2, false, 1.2, 0.36, 40), []string{"control plane 1000 live setup p99"}},
		// Another machine size: the control plane is not judged.
		{"4 CPUs", compareRun(4, false, 1.2, 0.36, 40), nil},
		// A quick run is not for numbers: nothing is judged.
		{"quick", compareRun(2, true, 0.5, 0.1, 40), nil},
		{"improved", compareRun(2, false, 1.5, 0.5, 10), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Compare(base, tc.cur, DefaultThreshold)
			var got []string
			for _, r := range c.Regressions() {
				got = append(got, r.Figure)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("regressions %q, want %q", got, tc.want)
			}
			var b strings.Builder
			if err := c.WriteMarkdown(&b); err != nil {
				t.Fatal(err)
			}
			md := b.String()
			for _, f := range tc.want {
				if !strings.Contains(md, "| "+f+" ") || !strings.Contains(md, "**regression**") {
					t.Errorf("Markdown does not flag %q:\n%s", f, md)
				}
			}
		})
	}
}

func TestCompareSpread(t *testing.T) {
	// The median moved by 20 %, but the rounds overlap: not a regression.
	old := compareRun(2, false, 1.2, 0.36, 28)
	cur := compareRun(2, false, 1.2, 0.36, 28)
	cur.ControlPlane.Levels[0].SetupP99 = Summarize([]float64{20, 33.6, 40})
	old.ControlPlane.Levels[0].SetupP99 = Summarize([]float64{25, 28, 30})
	c := Compare(old, cur, DefaultThreshold)
	if r := c.Regressions(); len(r) != 0 {
		t.Fatalf("overlapping rounds flagged: %+v", r)
	}
}

func TestCompareSchema(t *testing.T) {
	old := compareRun(2, false, 1.2, 0.36, 28)
	old.Schema = SchemaVersion + 1
	c := Compare(old, compareRun(2, false, 0.5, 0.1, 99), DefaultThreshold)
	if len(c.Changes) != 0 || len(c.Notes) != 1 {
		t.Fatalf("changes %d, notes %q", len(c.Changes), c.Notes)
	}
}
