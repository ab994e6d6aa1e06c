// Package nsc is a client library that talks to a forwarder the way an NSM
// client (through its NSMgr) does: it builds KERNEL requests with a proper
// path, refreshes and closes connections, and reads the forwarder's
// MonitorConnection stream. nsmctl, the conformance tests and the benchmarks
// use it.
package nsc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Defaults applied by Request and Refresh.
const (
	DefaultName          = "nsc"
	DefaultTokenLifetime = 10 * time.Minute
)

// RequestOptions describe the connection an NSC asks for.
type RequestOptions struct {
	// ID is the connection id and the id of the NSC's path segment.
	// Default: a random UUID.
	ID string
	// Name is the NSC's path segment name. Default DefaultName.
	Name string
	// NetworkService is the requested network service.
	NetworkService string
	// Payload is forwarder.PayloadEthernet or forwarder.PayloadIP.
	// Default PayloadEthernet.
	Payload forwarder.Payload
	// Labels are the connection's labels.
	Labels map[string]string
	// NetNSURL names the client's network namespace (file:// or inode://).
	NetNSURL string
	// IfName is the client-side interface name; empty lets the forwarder
	// choose.
	IfName string
	// TokenLifetime sets the NSC segment's Expires. Default
	// DefaultTokenLifetime.
	TokenLifetime time.Duration
	// Context is sent as the connection context (requested addresses, MTU).
	// Optional.
	Context *networkservice.ConnectionContext
	// Mechanisms, when not nil, replace the whole preference list built
	// from NetNSURL and IfName, so tests can send malformed input.
	Mechanisms []*networkservice.Mechanism
}

// NewRequest returns the request an NSC sends for opts.
func NewRequest(opts RequestOptions) *networkservice.NetworkServiceRequest {
	id := opts.ID
	if id == "" {
		id = uuid.NewString()
	}
	name := opts.Name
	if name == "" {
		name = DefaultName
	}
	payload := opts.Payload
	if payload == "" {
		payload = forwarder.PayloadEthernet
	}
	lifetime := opts.TokenLifetime
	if lifetime <= 0 {
		lifetime = DefaultTokenLifetime
	}
	prefs := opts.Mechanisms
	if prefs == nil {
		params := map[string]string{forwarder.ParamNetNSURL: opts.NetNSURL}
		if opts.IfName != "" {
			params[forwarder.ParamIfName] = opts.IfName
		}
		prefs = []*networkservice.Mechanism{{
			Cls:        forwarder.ClsLocal,
			Type:       forwarder.MechanismKernel,
			Parameters: params,
		}}
	}
	conn := &networkservice.Connection{
		Id:             id,
		NetworkService: opts.NetworkService,
		Payload:        string(payload),
		Labels:         maps.Clone(opts.Labels),
		Path: &networkservice.Path{
			Index: 0,
			PathSegments: []*networkservice.PathSegment{{
				Name:    name,
				Id:      id,
				Token:   newToken(),
				Expires: timestamppb.New(time.Now().Add(lifetime)),
			}},
		},
	}
	if opts.Context != nil {
		conn.Context = opts.Context
	}
	return &networkservice.NetworkServiceRequest{Connection: conn, MechanismPreferences: prefs}
}

// Request asks client for the connection opts describe and returns what the
// forwarder answered.
func Request(ctx context.Context, client networkservice.NetworkServiceClient, opts RequestOptions) (*networkservice.Connection, error) {
	conn, err := client.Request(ctx, NewRequest(opts))
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	return conn, nil
}

// RefreshRequest returns the request that refreshes conn: the same path
// (so every hop finds its own segment again) with the NSC's segment token and
// Expires renewed, and the connection's mechanism as the only preference.
// lifetime <= 0 means DefaultTokenLifetime.
func RefreshRequest(conn *networkservice.Connection, lifetime time.Duration) (*networkservice.NetworkServiceRequest, error) {
	if lifetime <= 0 {
		lifetime = DefaultTokenLifetime
	}
	c := conn.Clone()
	segs := c.GetPath().GetPathSegments()
	if len(segs) == 0 {
		return nil, errors.New("refresh: connection has no path")
	}
	c.Path.Index = 0
	segs[0].Token = newToken()
	segs[0].Expires = timestamppb.New(time.Now().Add(lifetime))
	c.Id = segs[0].GetId()
	req := &networkservice.NetworkServiceRequest{Connection: c}
	if m := c.GetMechanism(); m != nil {
		req.MechanismPreferences = []*networkservice.Mechanism{m.Clone()}
	}
	return req, nil
}

// Refresh re-sends conn as RefreshRequest builds it.
func Refresh(ctx context.Context, client networkservice.NetworkServiceClient, conn *networkservice.Connection, lifetime time.Duration) (*networkservice.Connection, error) {
	req, err := RefreshRequest(conn, lifetime)
	if err != nil {
		return nil, err
	}
	out, err := client.Request(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("refresh: %w", err)
	}
	return out, nil
}

// Close closes conn, as returned by Request or Refresh (or read from the
// monitor stream).
func Close(ctx context.Context, client networkservice.NetworkServiceClient, conn *networkservice.Connection) error {
	c := conn.Clone()
	if c.GetPath() != nil && len(c.GetPath().GetPathSegments()) > 0 {
		c.Path.Index = 0
		c.Id = c.GetPath().GetPathSegments()[0].GetId()
	}
	if _, err := client.Close(ctx, c); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// List returns the connections of the monitor's initial state transfer, by
// the id the monitor keys them with.
func List(ctx context.Context, mc networkservice.MonitorConnectionClient, selector *networkservice.MonitorScopeSelector) (map[string]*networkservice.Connection, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if selector == nil {
		selector = &networkservice.MonitorScopeSelector{}
	}
	stream, err := mc.MonitorConnections(ctx, selector)
	if err != nil {
		return nil, fmt.Errorf("monitor connections: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("monitor connections: %w", err)
		}
		if ev.GetType() == networkservice.ConnectionEventType_INITIAL_STATE_TRANSFER {
			out := ev.GetConnections()
			if out == nil {
				out = make(map[string]*networkservice.Connection)
			}
			return out, nil
		}
	}
}

// Watch calls fn with every event of the monitor stream, the initial state
// transfer first, until fn returns an error (returned as is), the stream
// ends or ctx is done (ctx.Err()).
func Watch(ctx context.Context, mc networkservice.MonitorConnectionClient, selector *networkservice.MonitorScopeSelector, fn func(*networkservice.ConnectionEvent) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if selector == nil {
		selector = &networkservice.MonitorScopeSelector{}
	}
	stream, err := mc.MonitorConnections(ctx, selector)
	if err != nil {
		return fmt.Errorf("monitor connections: %w", err)
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// gRPC may see the deadline pass before the context's own
			// timer fires.
			if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
				return context.DeadlineExceeded
			}
			return fmt.Errorf("monitor connections: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}

// Counters returns the numeric metrics of the path segment called
// forwarderName (the nsmpath.Metric* keys). An empty forwarderName takes the
// first segment that carries metrics. Non-numeric values are skipped.
func Counters(conn *networkservice.Connection, forwarderName string) map[string]uint64 {
	out := make(map[string]uint64)
	for _, seg := range conn.GetPath().GetPathSegments() {
		if forwarderName != "" && seg.GetName() != forwarderName {
			continue
		}
		if forwarderName == "" && len(seg.GetMetrics()) == 0 {
			continue
		}
		for k, v := range seg.GetMetrics() {
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				out[k] = n
			}
		}
		break
	}
	return out
}

// NetNSURLFromPath returns the file:// URL of a namespace file; a relative
// path is made absolute first.
func NetNSURLFromPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return (&url.URL{Scheme: "file", Path: path}).String()
}

func newToken() string { return rand.Text() }
