package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
)

// VPPSmallOptions configure the VPP small-node series.
type VPPSmallOptions struct {
	// Bursts are the numbers of Requests sent at the same instant.
	Bursts []int
	// Rounds is how often every burst is sent, each round with a fresh
	// forwarder and VPP.
	Rounds int
	// Live are the connection counts VPP's memory is measured at.
	Live []int
	// IPv6Burst, when not zero, is one more burst of that size with IPv6
	// on in the workloads (VPP 25.10's af_packet livelock).
	IPv6Burst int
	// Deadline is a Request's deadline (NSM's clients use 15 s).
	Deadline time.Duration
}

// VPPSmallResult is the VPP small-node series: concurrent Requests through
// the gRPC API and VPP's memory per connection, with the defaults nsmfwd
// gives a VPP that shares the node's CPUs.
type VPPSmallResult struct {
	Status string      `json:"status"`
	Reason string      `json:"reason,omitempty"`
	Bursts []VPPBurst  `json:"bursts,omitempty"`
	Memory []VPPMemory `json:"memory,omitempty"`
}

// VPPBurst is one burst size: Concurrent Requests sent together, Rounds
// times. Latencies in ms, per round's percentile.
type VPPBurst struct {
	Concurrent int  `json:"concurrent"`
	IPv6       bool `json:"ipv6"`
	Requests   int  `json:"requests"`
	Failed     int  `json:"failed"`
	SetupP50   Stat `json:"setup_p50_ms"`
	SetupP99   Stat `json:"setup_p99_ms"`
}

// VPPMemory is VPP's resident memory with Live connections up, and its
// growth from the idle VPP per connection (KiB).
type VPPMemory struct {
	Live       int  `json:"live"`
	RSSKiB     Stat `json:"rss_kib"`
	PerConnKiB Stat `json:"rss_per_conn_kib"`
}

// burst returns the series' figures for a burst size, or nil.
func (r *VPPSmallResult) burst(n int, ipv6 bool) *VPPBurst {
	if r == nil {
		return nil
	}
	for i := range r.Bursts {
		if r.Bursts[i].Concurrent == n && r.Bursts[i].IPv6 == ipv6 {
			return &r.Bursts[i]
		}
	}
	return nil
}

func (r *VPPSmallResult) memory(n int) *VPPMemory {
	if r == nil {
		return nil
	}
	for i := range r.Memory {
		if r.Memory[i].Live == n {
			return &r.Memory[i]
		}
	}
	return nil
}

// RunVPPSmall measures nsmfwd's VPP dataplane (af_packet, default rings and
// scheduling) as a 2-core node would run it.
func RunVPPSmall(ctx context.Context, e *Env, o VPPSmallOptions) (*VPPSmallResult, error) {
	bin := VPPBinary()
	if bin == "" {
		return &VPPSmallResult{Status: StatusSkipped, Reason: "no VPP binary found via VPP_BIN or PATH"}, nil
	}
	// IPv4 only: with IPv6 on, the neighbour discovery of interfaces
	// coming up together trips VPP 25.10's af_packet livelock (the
	// IPv6 burst shows what that does).
	w, err := newNSMWorldCIDR(ctx, e, "vsm", "169.254.0.0/16")
	if err != nil {
		return nil, err
	}
	for _, ns := range []string{w.node, w.client, w.endpoint} {
		if _, err := run(ctx, inNS(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")...); err != nil {
			return nil, err
		}
	}
	lat := map[int][][]time.Duration{}
	failed := map[int]int{}
	var rss map[int][]float64
	for round := range o.Rounds {
		if err := startVPPForwarder(ctx, w, bin); err != nil {
			return nil, err
		}
		for _, n := range o.Bursts {
			d, f, err := requestBurst(ctx, w, n, o.Deadline)
			if err != nil {
				w.stopForwarder()
				return nil, err
			}
			lat[n], failed[n] = append(lat[n], d), failed[n]+f
			e.Log.InfoContext(ctx, "VPP burst", "round", round, "concurrent", n, "failed", f)
		}
		if round == 0 {
			if rss, err = vppMemory(ctx, w, o.Live); err != nil {
				w.stopForwarder()
				return nil, err
			}
		}
		w.stopForwarder()
		stopVPP(w)
	}
	res := &VPPSmallResult{Status: StatusMeasured}
	for _, n := range o.Bursts {
		res.Bursts = append(res.Bursts, burstFigures(n, false, lat[n], failed[n]))
	}
	for _, n := range o.Live {
		if r := rss[n]; len(r) == 2 {
			res.Memory = append(res.Memory, VPPMemory{Live: n, RSSKiB: Summarize(r[:1]), PerConnKiB: Summarize(r[1:])})
		}
	}
	if o.IPv6Burst > 0 {
		w6, err := newNSMWorld(ctx, e, "vsm6")
		if err != nil {
			return nil, err
		}
		if err := startVPPForwarder(ctx, w6, bin); err != nil {
			return nil, err
		}
		d, f, err := requestBurst(ctx, w6, o.IPv6Burst, o.Deadline)
		w6.stopForwarder()
		stopVPP(w6)
		if err != nil {
			return nil, err
		}
		res.Bursts = append(res.Bursts, burstFigures(o.IPv6Burst, true, [][]time.Duration{d}, f))
	}
	return res, nil
}

func burstFigures(n int, ipv6 bool, rounds [][]time.Duration, failed int) VPPBurst {
	b := VPPBurst{Concurrent: n, IPv6: ipv6, Requests: n * len(rounds), Failed: failed}
	var p50, p99 []float64
	for _, d := range rounds {
		if len(d) == 0 {
			continue
		}
		p := DurationPercentiles(d, 50, 99)
		p50, p99 = append(p50, p[0]), append(p99, p[1])
	}
	b.SetupP50, b.SetupP99 = Summarize(p50), Summarize(p99)
	return b
}

// startVPPForwarder starts nsmfwd with the VPP dataplane and its defaults.
func startVPPForwarder(ctx context.Context, w *nsmWorld, bin string) error {
	return w.startForwarder(ctx, "NSM_DATAPLANE=vpp", "VPP_BIN="+bin, "NSM_VPP_KERNEL_MODE=af_packet",
		"NSM_VPP_RUNTIME_DIR="+filepath.Join(w.dir, "vpp"), "NSM_VPP_MEMIF_DIR="+filepath.Join(w.dir, "memif"))
}

// requestBurst sends n Requests at the same instant, each once (no retry)
// with the deadline, and closes the ones that succeeded. It returns the
// latencies of the successful ones and the number that failed.
func requestBurst(ctx context.Context, w *nsmWorld, n int, deadline time.Duration) ([]time.Duration, int, error) {
	// The first Request after a start may find the next hop connecting.
	c, _, err := w.request(ctx, 9999)
	if err != nil {
		return nil, 0, err
	}
	if _, err := w.close(ctx, c); err != nil {
		return nil, 0, err
	}
	var (
		mu     sync.Mutex
		wg     sync.WaitGroup
		lat    []time.Duration
		conns  []*networkservice.Connection
		failed int
		start  = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			<-start
			rctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			t0 := time.Now()
			conn, err := nsc.Request(rctx, w.nsc, nsc.RequestOptions{
				NetworkService: benchService, NetNSURL: nsc.NetNSURLFromPath(NSPath(w.client)), IfName: fmt.Sprintf("nsm%d", i),
			})
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				w.e.Log.WarnContext(ctx, "burst request failed", "if_name", fmt.Sprintf("nsm%d", i), "err", err)
				return
			}
			lat, conns = append(lat, d), append(conns, conn)
		})
	}
	close(start)
	wg.Wait()
	for _, c := range conns {
		if _, err := w.close(ctx, c); err != nil {
			return nil, 0, err
		}
	}
	return lat, failed, nil
}

// vppMemory builds up each count of live connections (4 Requests at a
// time) and reads VPP's RSS: rss[n] is {RSS with n up, growth per
// connection}.
func vppMemory(ctx context.Context, w *nsmWorld, live []int) (map[int][]float64, error) {
	pid, err := vppPid(w)
	if err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	rss0, err := RSSKiB(pid)
	if err != nil {
		return nil, err
	}
	out := map[int][]float64{}
	for _, n := range live {
		conns := make([]*networkservice.Connection, n)
		err := parallel(ctx, n, 4, func(i int) error {
			c, _, err := w.request(ctx, i)
			conns[i] = c
			return err
		})
		if err == nil {
			time.Sleep(500 * time.Millisecond)
			var r float64
			if r, err = RSSKiB(pid); err == nil {
				out[n] = []float64{r, (r - rss0) / float64(n)}
			}
		}
		closeAll(w, conns)
		if err != nil {
			return nil, fmt.Errorf("VPP memory at %d connections: %w", n, err)
		}
	}
	return out, nil
}

func vppPid(w *nsmWorld) (int, error) {
	b, err := os.ReadFile(filepath.Join(w.dir, "vpp", "vpp.pid"))
	if err != nil {
		return 0, fmt.Errorf("VPP pid: %w", err)
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
