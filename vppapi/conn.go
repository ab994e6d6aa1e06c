package vppapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.fd.io/govpp/adapter"
	"go.fd.io/govpp/adapter/socketclient"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/memclnt"
	"go.fd.io/govpp/binapi/vpe"
	"go.fd.io/govpp/core"
)

// DefaultCallTimeout bounds one binary-API round trip unless
// ConnOptions.CallTimeout says otherwise.
const DefaultCallTimeout = 10 * time.Second

// ConnOptions configure Dial.
type ConnOptions struct {
	// Socket is VPP's binary-API socket (socksvr socket-name).
	Socket string
	// Adapter replaces the socket client (tests: govpp's mock adapter).
	Adapter adapter.VppAPI
	// CallTimeout bounds every call; default DefaultCallTimeout.
	CallTimeout time.Duration
	// Logger receives each call at debug level; nil discards.
	Logger *slog.Logger
	// Observe, when set, is told every call's message name, duration and
	// error (for the call-duration metric).
	Observe func(msg string, d time.Duration, err error)
}

// Conn is nsmfwd's connection to VPP's binary API. It implements govpp's
// api.Connection, so calls go through Invoke and NewStream (never the
// deprecated Channel API), and gives every call a timeout of its own that
// a cancelled gRPC request cannot cut short half-way: a create whose reply
// is abandoned would leave an object nobody knows about.
type Conn struct {
	conn    *core.Connection
	opts    ConnOptions
	log     *slog.Logger
	version string
}

var _ api.Connection = (*Conn)(nil)

// IncompatibleError says VPP's binary API differs from the one nsmfwd was
// built against (govpp's binapi for VPP BinapiVersion).
type IncompatibleError struct {
	// Version is what VPP reports (show version).
	Version string
	// Messages are name_crc of the messages VPP does not know as such.
	Messages []string
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("VPP %s is not compatible with nsmfwd's binary API (built for VPP %s): %d messages differ: %s",
		e.Version, BinapiVersion, len(e.Messages), strings.Join(e.Messages, ", "))
}

// Dial connects to VPP, reads its version and checks that every message
// nsmfwd uses has the CRC nsmfwd was built with. An incompatible VPP is an
// *IncompatibleError naming the version and the messages.
func Dial(ctx context.Context, opts ConnOptions) (*Conn, error) {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ad := opts.Adapter
	if ad == nil {
		if opts.Socket == "" {
			return nil, errors.New("vpp: no binary-API socket given")
		}
		ad = socketclient.NewVppClient(opts.Socket)
	}
	type result struct {
		c   *core.Connection
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := core.Connect(ad)
		done <- result{c, err}
	}()
	var cc *core.Connection
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("vpp connect %s: %w", opts.Socket, r.err)
		}
		cc = r.c
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Disconnect()
			}
		}()
		return nil, fmt.Errorf("vpp connect %s: %w", opts.Socket, ctx.Err())
	}
	c := &Conn{conn: cc, opts: opts, log: log.With("component", "vppapi")}
	var ver vpe.ShowVersionReply
	if err := c.Invoke(ctx, &vpe.ShowVersion{}, &ver); err != nil {
		c.Close()
		return nil, fmt.Errorf("vpp show version: %w", err)
	}
	c.version = ver.Version
	if bad := c.incompatible(); len(bad) > 0 {
		c.Close()
		return nil, &IncompatibleError{Version: c.version, Messages: bad}
	}
	return c, nil
}

// incompatible lists the messages VPP does not know with nsmfwd's CRC.
func (c *Conn) incompatible() []string {
	var bad []string
	for _, m := range Messages() {
		if _, err := c.conn.GetMessageID(m); err != nil {
			bad = append(bad, m.GetMessageName()+"_"+m.GetCrcString())
		}
	}
	slices.Sort(bad)
	return bad
}

// Supports reports whether VPP knows every message of msgs with nsmfwd's
// CRC (a plugin nsmfwd can do without, such as vxlan, may be missing).
func (c *Conn) Supports(msgs ...api.Message) bool {
	for _, m := range msgs {
		if _, err := c.conn.GetMessageID(m); err != nil {
			return false
		}
	}
	return true
}

// Version is VPP's version string as show version reports it.
func (c *Conn) Version() string { return c.version }

// Close disconnects from VPP.
func (c *Conn) Close() {
	if c.conn != nil {
		c.conn.Disconnect()
	}
}

// callContext detaches ctx from its cancellation and bounds it with the
// call timeout.
func (c *Conn) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.opts.CallTimeout)
}

func (c *Conn) record(ctx context.Context, msg string, start time.Time, err error) {
	d := time.Since(start)
	if c.opts.Observe != nil {
		c.opts.Observe(msg, d, err)
	}
	c.log.DebugContext(ctx, "vpp call", "msg", msg, "duration", d, "error", err)
}

// Invoke implements api.Connection. A reply with a non-zero retval is an
// api.VPPApiError.
func (c *Conn) Invoke(ctx context.Context, req, reply api.Message) error {
	cctx, cancel := c.callContext(ctx)
	defer cancel()
	start := time.Now()
	err := c.conn.Invoke(cctx, req, reply)
	if err == nil {
		err = retval(reply)
	}
	c.record(ctx, req.GetMessageName(), start, err)
	if err != nil {
		return fmt.Errorf("%s: %w", req.GetMessageName(), err)
	}
	return nil
}

// Ping sends a control ping bounded by ctx itself: unlike Invoke, a
// liveness probe must give up at its own deadline, not the call timeout.
func (c *Conn) Ping(ctx context.Context) error {
	start := time.Now()
	req := &memclnt.ControlPing{}
	err := c.conn.Invoke(ctx, req, &memclnt.ControlPingReply{})
	c.record(ctx, req.GetMessageName(), start, err)
	if err != nil {
		return fmt.Errorf("%s: %w", req.GetMessageName(), err)
	}
	return nil
}

// NewStream implements api.Connection, with the stream's context detached
// from ctx's cancellation and bounded by the call timeout.
func (c *Conn) NewStream(ctx context.Context, options ...api.StreamOption) (api.Stream, error) {
	cctx, cancel := c.callContext(ctx)
	s, err := c.conn.NewStream(cctx, options...)
	if err != nil {
		cancel()
		return nil, err
	}
	return &stream{Stream: s, cancel: cancel}, nil
}

type stream struct {
	api.Stream
	cancel context.CancelFunc
}

func (s *stream) Close() error {
	defer s.cancel()
	return s.Stream.Close()
}

// WatchEvent implements api.Connection.
func (c *Conn) WatchEvent(ctx context.Context, event api.Message) (api.Watcher, error) {
	return c.conn.WatchEvent(ctx, event)
}

// Dump sends a dump request and collects its details messages of type T.
func Dump[T api.Message](ctx context.Context, c *Conn, req api.Message) ([]T, error) {
	start := time.Now()
	out, err := dump[T](ctx, c, req)
	c.record(ctx, req.GetMessageName(), start, err)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.GetMessageName(), err)
	}
	return out, nil
}

func dump[T api.Message](ctx context.Context, c *Conn, req api.Message) ([]T, error) {
	s, err := c.NewStream(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = s.Close() }()
	if err := s.SendMsg(req); err != nil {
		return nil, err
	}
	if err := s.SendMsg(&memclnt.ControlPing{}); err != nil {
		return nil, err
	}
	var out []T
	for {
		m, err := s.RecvMsg()
		if err != nil {
			return nil, err
		}
		switch m := m.(type) {
		case *memclnt.ControlPingReply:
			return out, retval(m)
		case T:
			out = append(out, m)
		default:
			return nil, fmt.Errorf("unexpected %s in dump", m.GetMessageName())
		}
	}
}

// retval turns a reply's Retval field into an api.VPPApiError.
func retval(reply api.Message) error {
	v := reflect.ValueOf(reply)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	f := v.FieldByName("Retval")
	if !f.IsValid() || f.Kind() != reflect.Int32 {
		return nil
	}
	return api.RetvalToVPPApiError(int32(f.Int()))
}
