package bench

import (
	"math"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct{ p, want float64 }{
		{0, 1}, {50, 5.5}, {90, 9.1}, {99, 9.91}, {100, 10}, {-1, 1}, {150, 10},
	} {
		if got := Percentile(s, c.p); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile([]float64{42}, 99); got != 42 {
		t.Errorf("one sample: %v", got)
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("empty: want NaN")
	}
}

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{3, 1, 2})
	if s.N != 3 || s.Median != 2 || s.Min != 1 || s.Max != 3 || s.Mean != 2 || math.Abs(s.Stddev-1) > 1e-9 {
		t.Fatalf("Summarize = %+v", s)
	}
	if s.Runs[0] != 3 {
		t.Fatalf("runs must keep their order: %v", s.Runs)
	}
	if Summarize(nil).Valid() {
		t.Fatal("empty Stat is valid")
	}
}

func TestRatiosPairRounds(t *testing.T) {
	got := Ratios(Summarize([]float64{2, 6, 9}), Summarize([]float64{1, 2, 0}))
	// Round 3 has a zero reference and is dropped.
	if got.N != 2 || got.Min != 2 || got.Max != 3 {
		t.Fatalf("Ratios = %+v", got)
	}
}

func TestDurationPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*time.Millisecond)
	}
	p := DurationPercentiles(ds, 50, 99)
	if math.Abs(p[0]-50.5) > 1e-9 || math.Abs(p[1]-99.01) > 1e-9 {
		t.Fatalf("DurationPercentiles = %v", p)
	}
}

func TestParseVmRSS(t *testing.T) {
	got, err := parseVmRSS("Name:\tnsmfwd\nVmPeak:\t  9000 kB\nVmRSS:\t   20480 kB\nThreads:\t7\n")
	if err != nil || got != 20480 {
		t.Fatalf("parseVmRSS = %v, %v", got, err)
	}
	if _, err := parseVmRSS("Name: x\n"); err == nil {
		t.Fatal("no VmRSS: want an error")
	}
}
