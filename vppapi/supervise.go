package vppapi

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// SuperviseOptions configure Supervise.
type SuperviseOptions struct {
	// Process is the supervised local VPP; nil for an external VPP.
	Process *Process
	// Dial connects to VPP again after it restarted.
	Dial func(ctx context.Context) (*Conn, error)
	// Setup, when set, prepares a VPP that came back before the
	// connections are replayed (the uplink); its error is logged.
	Setup func(ctx context.Context, c *Conn) error
	// Dataplane gets the new connection and replays its connections.
	Dataplane *Dataplane
	// Interval between liveness pings (default 1 s); three failures in a
	// row count as VPP gone.
	Interval time.Duration
	// Logger receives lifecycle logs; nil discards them.
	Logger *slog.Logger
}

// Supervise watches VPP until ctx ends. When the supervised VPP exits it
// starts a new one; when an external VPP stops answering it waits for it
// to come back. Either way it reconnects and has the dataplane replay
// every live connection.
func Supervise(ctx context.Context, opts SuperviseOptions) error {
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for {
		reason, err := waitLoss(ctx, opts)
		if err != nil {
			return err
		}
		log.WarnContext(ctx, "VPP lost; restarting and replaying connections", "reason", reason)
		if opts.Process != nil {
			if err := killHung(ctx, opts.Process, log); err != nil {
				return err
			}
		}
		if old := opts.Dataplane.current(); old != nil {
			old.Close()
		}
		opts.Dataplane.mu.Lock()
		opts.Dataplane.conn = nil
		opts.Dataplane.mu.Unlock()
		var conn *Conn
		for backoff := 100 * time.Millisecond; ; backoff = min(backoff*2, 5*time.Second) {
			if opts.Process != nil {
				select {
				case <-opts.Process.Exited():
					if err := opts.Process.Restart(ctx); err != nil {
						log.ErrorContext(ctx, "VPP restart failed", "error", err)
					}
				default:
				}
			}
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			conn, err = opts.Dial(dctx)
			cancel()
			if err == nil {
				break
			}
			log.WarnContext(ctx, "VPP not reachable yet", "error", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
		}
		if opts.Setup != nil {
			if err := opts.Setup(ctx, conn); err != nil {
				log.ErrorContext(ctx, "VPP setup after restart failed", "error", err)
			}
		}
		failed := opts.Dataplane.Rebind(ctx, conn)
		log.InfoContext(ctx, "VPP back", "version", conn.Version(), "replay_failed", len(failed))
	}
}

// killHung kills a local VPP that is alive but stopped answering, so the
// restart below can start a new one. A VPP main loop that stopped
// dispatching (VPP 25.10 livelocks with 16 or more readable af_packet
// sockets, see docs/operations.md) never recovers on its own, and a
// socket that accepts but never answers would keep Dial retrying for ever.
func killHung(ctx context.Context, p *Process, log *slog.Logger) error {
	exited := p.Exited()
	select {
	case <-exited:
		return nil
	default:
	}
	log.WarnContext(ctx, "VPP is running but not answering; killing it", "pid", p.Pid())
	p.Kill()
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitLoss returns when the supervised VPP exits or VPP stops answering.
func waitLoss(ctx context.Context, opts SuperviseOptions) (string, error) {
	var exited <-chan struct{}
	if opts.Process != nil {
		exited = opts.Process.Exited()
	}
	t := time.NewTicker(opts.Interval)
	defer t.Stop()
	fails := 0
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-exited:
			return "process exited", nil
		case <-t.C:
			c := opts.Dataplane.current()
			if c == nil {
				return "not connected", nil
			}
			pctx, cancel := context.WithTimeout(ctx, opts.Interval)
			err := c.Ping(pctx)
			cancel()
			if err == nil {
				fails = 0
				continue
			}
			if fails++; fails >= 3 {
				return fmt.Sprintf("no answer to control ping: %v", err), nil
			}
		}
	}
}
