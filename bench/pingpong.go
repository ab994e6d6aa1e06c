package bench

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// PingPongSize is the UDP payload of the latency probes.
const PingPongSize = 64

// Pong echoes every UDP datagram received on addr back to its sender until
// ctx is done.
func Pong(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return fmt.Errorf("pong listen: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = pc.Close() })
	defer stop()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("pong read: %w", err)
		}
		if _, err := pc.WriteTo(buf[:n], from); err != nil && ctx.Err() == nil {
			return fmt.Errorf("pong write: %w", err)
		}
	}
}

// PingOptions configure Ping.
type PingOptions struct {
	// Addr is the pong server, host:port.
	Addr string
	// Count is the number of measured round trips.
	Count int
	// Interval is the pause between round trips (light load).
	Interval time.Duration
	// Timeout is how long one reply is waited for before it counts as lost.
	Timeout time.Duration
}

// PingResult is the round-trip distribution Ping measured, in µs.
type PingResult struct {
	Count int     `json:"count"`
	Lost  int     `json:"lost"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	Min   float64 `json:"min_us"`
	Max   float64 `json:"max_us"`
}

// Ping sends one datagram at a time to a Pong server and measures each
// round trip. It first waits (up to 5 s) for the server to answer, so it
// can be started together with the server.
func Ping(ctx context.Context, o PingOptions) (PingResult, error) {
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", o.Addr)
	if err != nil {
		return PingResult{}, fmt.Errorf("ping dial: %w", err)
	}
	defer conn.Close()
	buf := make([]byte, PingPongSize)
	rbuf := make([]byte, 2048)
	var seq uint64
	once := func(timeout time.Duration) (time.Duration, error) {
		seq++
		binary.BigEndian.PutUint64(buf, seq)
		_ = conn.SetDeadline(time.Now().Add(timeout))
		t0 := time.Now()
		if _, err := conn.Write(buf); err != nil {
			return 0, err
		}
		for {
			n, err := conn.Read(rbuf)
			if err != nil {
				return 0, err
			}
			// A late reply to an earlier probe is skipped.
			if n >= 8 && binary.BigEndian.Uint64(rbuf) == seq {
				return time.Since(t0), nil
			}
		}
	}
	ready := time.Now().Add(5 * time.Second)
	for {
		if _, err := once(200 * time.Millisecond); err == nil {
			break
		} else if time.Now().After(ready) || ctx.Err() != nil {
			return PingResult{}, fmt.Errorf("ping %s: no answer: %w", o.Addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rtts := make([]float64, 0, o.Count)
	lost := 0
	for range o.Count {
		if ctx.Err() != nil {
			return PingResult{}, ctx.Err()
		}
		rtt, err := once(o.Timeout)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			lost++
		case err != nil:
			return PingResult{}, fmt.Errorf("ping %s: %w", o.Addr, err)
		default:
			rtts = append(rtts, float64(rtt)/float64(time.Microsecond))
		}
		time.Sleep(o.Interval)
	}
	if len(rtts) == 0 {
		return PingResult{}, fmt.Errorf("ping %s: all %d probes lost", o.Addr, o.Count)
	}
	slices.Sort(rtts)
	return PingResult{
		Count: len(rtts), Lost: lost,
		P50: Percentile(rtts, 50), P99: Percentile(rtts, 99),
		Min: rtts[0], Max: rtts[len(rtts)-1],
	}, nil
}

// ParsePingResult parses the JSON a `nsmbench ping` prints.
func ParsePingResult(b []byte) (PingResult, error) {
	var r PingResult
	if err := json.Unmarshal(b, &r); err != nil {
		return PingResult{}, fmt.Errorf("ping result: %w", err)
	}
	return r, nil
}
