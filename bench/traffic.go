package bench

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// TrafficOptions configure one round of traffic over a Path.
type TrafficOptions struct {
	// Seconds per iperf3 test.
	Seconds int
	// PingCount round trips, PingInterval apart.
	PingCount    int
	PingInterval time.Duration
}

// Every test gets its own port, so that a server still exiting from the
// previous test cannot be in the way.
var testPort atomic.Int32

func nextPort() string { return strconv.Itoa(20000 + int(testPort.Add(1))%20000) }

// iperf3 runs one iperf3 test from p.ClientNS to a one-off server in
// p.ServerNS, each pinned to its CPU, and returns the receiver's figures.
func (e *Env) iperf3(ctx context.Context, p Path, name string, seconds int, extra ...string) (IperfResult, error) {
	port := nextPort()
	srv, err := e.Start(name+"-iperf3-server", nil, inNS(p.ServerNS, pinned(e.ServerCPU, "iperf3", "-s", "-1", "-p", port)...)...)
	if err != nil {
		return IperfResult{}, err
	}
	defer srv.Stop(time.Second)
	args := append([]string{"iperf3", "-c", p.ServerAddr.String(), "-p", port, "-t", strconv.Itoa(seconds), "-J"}, extra...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := runStdout(ctx, inNS(p.ClientNS, pinned(e.ClientCPU, args...)...)...)
		r, perr := ParseIperf3([]byte(out))
		if err == nil && perr == nil {
			return r, nil
		}
		// The server may not listen yet (iperf3 -J reports that in its
		// JSON, with or without a failing exit status).
		if strings.Contains(out, "unable to connect") && time.Now().Before(deadline) && ctx.Err() == nil {
			if srv.Exited() {
				return IperfResult{}, fmt.Errorf("%s: iperf3 server exited: %s", name, srv.Tail())
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if perr != nil {
			return IperfResult{}, fmt.Errorf("%s: %w", name, perr)
		}
		return IperfResult{}, fmt.Errorf("%s: %w", name, err)
	}
}

// ping measures the round trip from p.ClientNS to a pong server in
// p.ServerNS with the nsmbench binary, both pinned.
func (e *Env) ping(ctx context.Context, p Path, name string, count int, interval time.Duration) (PingResult, error) {
	port := nextPort()
	srv, err := e.Start(name+"-pong", nil, inNS(p.ServerNS, pinned(e.ServerCPU, e.Self, "pong", "-addr", ":"+port)...)...)
	if err != nil {
		return PingResult{}, err
	}
	defer srv.Stop(time.Second)
	out, err := runStdout(ctx, inNS(p.ClientNS, pinned(e.ClientCPU, e.Self, "ping",
		"-addr", net.JoinHostPort(p.ServerAddr.String(), port),
		"-count", strconv.Itoa(count), "-interval", interval.String())...)...)
	if err != nil {
		return PingResult{}, fmt.Errorf("%s: %w", name, err)
	}
	return ParsePingResult([]byte(out))
}

// measureTraffic runs the four traffic tests once over p and returns the
// figures by metric key.
func (e *Env) measureTraffic(ctx context.Context, p Path, name string, o TrafficOptions) (map[string]float64, error) {
	out := make(map[string]float64)
	r, err := e.iperf3(ctx, p, name+"-udp64", o.Seconds, "-u", "-l", "64", "-b", "0")
	if err != nil {
		return nil, err
	}
	out[MetricUDP64] = r.PPS() / 1e6
	if r, err = e.iperf3(ctx, p, name+"-udp1500", o.Seconds, "-u", "-l", "1472", "-b", "0"); err != nil {
		return nil, err
	}
	out[MetricUDP1500] = r.BitsPerSecond / 1e9
	if r, err = e.iperf3(ctx, p, name+"-tcp", o.Seconds); err != nil {
		return nil, err
	}
	out[MetricTCP] = r.BitsPerSecond / 1e9
	pr, err := e.ping(ctx, p, name, o.PingCount, o.PingInterval)
	if err != nil {
		return nil, err
	}
	out[MetricRTTP50], out[MetricRTTP99] = pr.P50, pr.P99
	return out, nil
}
