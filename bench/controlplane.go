package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
)

// CPOptions configure the control-plane series.
type CPOptions struct {
	// Levels are the counts of live connections measured.
	Levels []int
	// Rounds is how often every level is measured.
	Rounds int
	// Probes is the number of one-at-a-time Requests at each level.
	Probes int
	// MaxLevelRounds, when not zero, limits the rounds of the largest
	// level, which takes most of the time.
	MaxLevelRounds int
	// Concurrency bounds the Requests and Closes in flight while building
	// up and tearing down.
	Concurrency int
}

// cpSample is one level measured once.
type cpSample struct {
	setupP50, setupP99, buildP50, buildP99, buildRate float64
	closeP50, closeP99, closeRate, rss, rssPerConn    float64
	failures                                          float64
}

// RunControlPlane measures the control plane of a real nsmfwd process.
// Every level of every round gets a fresh forwarder, so its memory growth
// is measured from an idle (but warmed-up) process.
func RunControlPlane(ctx context.Context, e *Env, o CPOptions) (*ControlPlaneResult, error) {
	w, err := newNSMWorld(ctx, e, "cp")
	if err != nil {
		return nil, err
	}
	samples := make(map[int][]cpSample)
	// Round 0 is the warm-up (page cache, the endpoint, the kernel's
	// first-use allocations): 10 connections, discarded.
	for round := 0; round <= o.Rounds; round++ {
		levels := o.Levels
		if round == 0 {
			levels = []int{min(10, slices.Max(o.Levels))}
		}
		for _, n := range levels {
			if round > 0 && o.MaxLevelRounds > 0 && n == slices.Max(o.Levels) && round > o.MaxLevelRounds {
				continue
			}
			s, err := measureLevel(ctx, w, n, o)
			if err != nil {
				return nil, fmt.Errorf("control plane, %d live connections: %w", n, err)
			}
			e.Log.InfoContext(ctx, "control plane", "round", round, "live", n,
				"setup_p50_ms", s.setupP50, "setup_p99_ms", s.setupP99, "build_rate", s.buildRate,
				"close_p99_ms", s.closeP99, "rss_per_conn_kib", s.rssPerConn, "failures", s.failures)
			if round > 0 {
				samples[n] = append(samples[n], s)
			}
		}
	}
	res := &ControlPlaneResult{Status: StatusMeasured}
	for _, n := range o.Levels {
		ss := samples[n]
		col := func(f func(cpSample) float64) Stat {
			v := make([]float64, len(ss))
			for i, s := range ss {
				v[i] = f(s)
			}
			return Summarize(v)
		}
		res.Levels = append(res.Levels, CPLevel{
			Live:          n,
			SetupP50:      col(func(s cpSample) float64 { return s.setupP50 }),
			SetupP99:      col(func(s cpSample) float64 { return s.setupP99 }),
			BuildP50:      col(func(s cpSample) float64 { return s.buildP50 }),
			BuildP99:      col(func(s cpSample) float64 { return s.buildP99 }),
			BuildRate:     col(func(s cpSample) float64 { return s.buildRate }),
			CloseP50:      col(func(s cpSample) float64 { return s.closeP50 }),
			CloseP99:      col(func(s cpSample) float64 { return s.closeP99 }),
			CloseRate:     col(func(s cpSample) float64 { return s.closeRate }),
			RSSKiB:        col(func(s cpSample) float64 { return s.rss }),
			RSSPerConnKiB: col(func(s cpSample) float64 { return s.rssPerConn }),
			Failures:      col(func(s cpSample) float64 { return s.failures }),
		})
	}
	return res, nil
}

// measureLevel starts a forwarder, builds n connections, probes setup
// latency with n live, tears them down and stops the forwarder.
func measureLevel(ctx context.Context, w *nsmWorld, n int, o CPOptions) (s cpSample, err error) {
	if err := w.startForwarder(ctx); err != nil {
		return s, err
	}
	defer w.stopForwarder()
	f0 := w.failures.Load()
	defer func() { s.failures = float64(w.failures.Load() - f0) }()
	// Warm the forwarder up: gRPC connection, next-hop client, BPF object
	// loading.
	for i := range 3 {
		c, _, err := w.request(ctx, i)
		if err != nil {
			return s, err
		}
		if _, err := w.close(ctx, c); err != nil {
			return s, err
		}
	}
	time.Sleep(200 * time.Millisecond)
	rss0, err := RSSKiB(w.fwd.Cmd.Process.Pid)
	if err != nil {
		return s, err
	}

	conns := make([]*networkservice.Connection, n)
	lat := make([]time.Duration, n)
	t0 := time.Now()
	if err := parallel(ctx, n, o.Concurrency, func(i int) error {
		c, d, err := w.request(ctx, i)
		conns[i], lat[i] = c, d
		return err
	}); err != nil {
		closeAll(w, conns)
		return s, err
	}
	build := time.Since(t0)
	s.buildRate = float64(n) / build.Seconds()
	p := DurationPercentiles(lat, 50, 99)
	s.buildP50, s.buildP99 = p[0], p[1]

	time.Sleep(200 * time.Millisecond)
	rss1, err := RSSKiB(w.fwd.Cmd.Process.Pid)
	if err != nil {
		closeAll(w, conns)
		return s, err
	}
	s.rss, s.rssPerConn = rss1, (rss1-rss0)/float64(n)

	probes := make([]time.Duration, 0, o.Probes)
	for k := range o.Probes {
		c, d, err := w.request(ctx, n+k)
		if err != nil {
			closeAll(w, conns)
			return s, err
		}
		probes = append(probes, d)
		if _, err := w.close(ctx, c); err != nil {
			closeAll(w, conns)
			return s, err
		}
	}
	p = DurationPercentiles(probes, 50, 99)
	s.setupP50, s.setupP99 = p[0], p[1]

	closeLat := make([]time.Duration, n)
	t0 = time.Now()
	if err := parallel(ctx, n, o.Concurrency, func(i int) error {
		d, err := w.close(ctx, conns[i])
		closeLat[i] = d
		if err == nil {
			conns[i] = nil
		}
		return err
	}); err != nil {
		closeAll(w, conns)
		return s, err
	}
	s.closeRate = float64(n) / time.Since(t0).Seconds()
	p = DurationPercentiles(closeLat, 50, 99)
	s.closeP50, s.closeP99 = p[0], p[1]
	return s, nil
}

// closeAll closes what is left after a failure, ignoring errors: the
// namespaces and pin dir go at Cleanup anyway.
func closeAll(w *nsmWorld, conns []*networkservice.Connection) {
	ctx := context.Background()
	for _, c := range conns {
		if c != nil {
			_, _ = w.close(ctx, c)
		}
	}
}

// parallel calls fn(0..n-1) with at most conc calls in flight and returns
// the first error; after an error no new call starts.
func parallel(ctx context.Context, n, conc int, fn func(i int) error) error {
	conc = max(1, min(conc, n))
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	failed := func() bool { mu.Lock(); defer mu.Unlock(); return firstErr != nil }
	for range conc {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		if failed() || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return firstErr
}
