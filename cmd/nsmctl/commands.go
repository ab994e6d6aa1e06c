package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// common are the flags every subcommand has.
type common struct {
	Addr      string
	Timeout   time.Duration
	Output    string
	Forwarder string
	// spiffe is SPIFFE_ENDPOINT_SOCKET: when set, calls are mTLS with our
	// X.509 SVID and carry a token signed with it.
	spiffe string
}

func (c *common) register(fs *flag.FlagSet, e env, output bool) {
	c.spiffe = e.getenv("SPIFFE_ENDPOINT_SOCKET")
	def := e.getenv("NSM_CONNECT_TO")
	if def == "" {
		def = defaultAddr
	}
	fs.StringVar(&c.Addr, "addr", def, "forwarder URL: unix:///PATH or tcp://HOST:PORT; $NSM_CONNECT_TO sets the default")
	fs.DurationVar(&c.Timeout, "timeout", 30*time.Second, "deadline of each call")
	fs.StringVar(&c.Forwarder, "forwarder", "", "path segment name of the forwarder (counters, close); empty: the segment after the client")
	if output {
		fs.StringVar(&c.Output, "output", "text", "output format: text or json")
	}
}

func (c *common) check(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	if c.Output != "" && c.Output != "text" && c.Output != "json" {
		return usagef("--output %q: want text or json", c.Output)
	}
	if _, err := grpcTarget(c.Addr); err != nil {
		return err
	}
	return nil
}

// dial connects to the forwarder: with SPIFFE_ENDPOINT_SOCKET set, mutual
// TLS with our SVID and path tokens signed with it, valid for lifetime;
// otherwise plaintext. Both can pass descriptors over unix sockets.
// closeFn closes the connection and the SVID source.
func (c *common) dial(ctx context.Context, lifetime time.Duration) (cc *grpc.ClientConn, closeFn func(), err error) {
	target, err := grpcTarget(c.Addr)
	if err != nil {
		return nil, nil, err
	}
	opts := identity.PlaintextDialOptions()
	closeID := func() {}
	if c.spiffe != "" {
		wctx, cancel := context.WithTimeout(ctx, c.Timeout)
		id, closer, err := identity.FromWorkloadAPI(wctx, c.spiffe, lifetime)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("SPIFFE_ENDPOINT_SOCKET: %w", err)
		}
		opts, closeID = id.DialOptions(), func() { _ = closer.Close() }
	}
	cc, err = grpc.NewClient(target, opts...)
	if err != nil {
		closeID()
		return nil, nil, fmt.Errorf("dial %s: %w", c.Addr, err)
	}
	return cc, func() { _ = cc.Close(); closeID() }, nil
}

// session dials the forwarder for one call: the context carries --timeout,
// and done closes both. lifetime bounds our token (SPIFFE only).
func (c *common) session(ctx context.Context, lifetime time.Duration) (*grpc.ClientConn, context.Context, func(), error) {
	cc, closeFn, err := c.dial(ctx, lifetime)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	return cc, ctx, func() { cancel(); closeFn() }, nil
}

// ---- connect ----

type connectCmd struct {
	common
	Service  string
	NetNS    string
	NetNSURL string
	Inode    bool
	IfName   string
	Payload  string
	ID       string
	Name     string
	Labels   map[string]string
	Lifetime time.Duration
	Keep     bool
}

func parseConnect(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &connectCmd{}
	c.register(fs, e, true)
	var labels string
	fs.StringVar(&c.Service, "service", "", "network service to request (required)")
	fs.StringVar(&c.NetNS, "netns", "", "client network namespace file, e.g. /run/netns/NAME or /proc/PID/ns/net")
	fs.StringVar(&c.NetNSURL, "netns-url", "", "client network namespace as a URL (file:// or inode://), instead of --netns")
	fs.BoolVar(&c.Inode, "inode", false, "send --netns as inode://DEV/INO (as NSM's grpcfd does) instead of file://")
	fs.StringVar(&c.IfName, "ifname", "", "client-side interface name (at most 15 characters); empty lets the forwarder choose")
	fs.StringVar(&c.Payload, "payload", string(forwarder.PayloadEthernet), "payload: ETHERNET or IP")
	fs.StringVar(&c.ID, "id", "", "connection id (default: a random UUID)")
	fs.StringVar(&c.Name, "name", nsc.DefaultName, "client path segment name")
	fs.StringVar(&labels, "labels", "", "connection labels: KEY=VALUE,...")
	fs.DurationVar(&c.Lifetime, "lifetime", nsc.DefaultTokenLifetime, "token lifetime: the forwarder drops the connection this long after the last refresh")
	fs.BoolVar(&c.Keep, "keep", false, "stay in the foreground refreshing every lifetime/3; close on SIGINT/SIGTERM")
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	switch {
	case c.Service == "":
		return nil, usagef("--service is required")
	case (c.NetNS == "") == (c.NetNSURL == ""):
		return nil, usagef("give exactly one of --netns and --netns-url")
	case c.Inode && c.NetNS == "":
		return nil, usagef("--inode needs --netns")
	case c.Payload != string(forwarder.PayloadEthernet) && c.Payload != string(forwarder.PayloadIP):
		return nil, usagef("--payload %q: want ETHERNET or IP", c.Payload)
	case c.Lifetime <= 0:
		return nil, usagef("--lifetime must be positive")
	}
	var err error
	if c.Labels, err = parseLabels(labels); err != nil {
		return nil, err
	}
	return c, nil
}

func parseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	out := make(map[string]string)
	for kv := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, usagef("--labels: %q is not KEY=VALUE", kv)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

func (c *connectCmd) netnsURL() (string, error) {
	switch {
	case c.NetNSURL != "":
		return c.NetNSURL, nil
	case c.Inode:
		return nsc.InodeURL(c.NetNS)
	default:
		return nsc.NetNSURLFromPath(c.NetNS), nil
	}
}

func (c *connectCmd) run(ctx context.Context, e env) error {
	netnsURL, err := c.netnsURL()
	if err != nil {
		return err
	}
	cc, closeFn, err := c.dial(ctx, c.Lifetime)
	if err != nil {
		return err
	}
	defer closeFn()
	client := networkservice.NewNetworkServiceClient(cc)
	if c.Inode {
		// As NSM's NSC does: the namespace goes by descriptor (grpcfd)
		// too, so a forwarder without hostPID can open it.
		client = sendFile{NetworkServiceClient: client, path: c.NetNS}
	}
	rctx, cancel := context.WithTimeout(ctx, c.Timeout)
	conn, err := nsc.Request(rctx, client, nsc.RequestOptions{
		ID:             c.ID,
		Name:           c.Name,
		NetworkService: c.Service,
		Payload:        forwarder.Payload(c.Payload),
		Labels:         c.Labels,
		NetNSURL:       netnsURL,
		IfName:         c.IfName,
		TokenLifetime:  c.Lifetime,
	})
	cancel()
	if err != nil {
		return err
	}
	if err := printConn(e, c.Output, conn, c.Forwarder); err != nil {
		return err
	}
	if !c.Keep {
		return nil
	}
	return c.keep(ctx, e, client, conn)
}

// keep refreshes conn until ctx is done, then closes it.
func (c *connectCmd) keep(ctx context.Context, e env, client networkservice.NetworkServiceClient, conn *networkservice.Connection) error {
	t := time.NewTicker(max(c.Lifetime/3, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.Timeout)
			defer cancel()
			if err := nsc.Close(cctx, client, conn); err != nil {
				return err
			}
			fmt.Fprintf(e.stderr, "closed %s\n", conn.GetId())
			return nil
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, c.Timeout)
			next, err := nsc.Refresh(rctx, client, conn, c.Lifetime)
			cancel()
			if err != nil {
				// The connection may still be alive; try again next tick.
				fmt.Fprintf(e.stderr, "nsmctl connect: %s\n", describe(err))
				continue
			}
			conn = next
		}
	}
}

// ---- refresh / close ----

type byIDCmd struct {
	common
	ID       string
	Lifetime time.Duration
	refresh  bool
}

func parseRefresh(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &byIDCmd{refresh: true}
	c.register(fs, e, true)
	fs.StringVar(&c.ID, "id", "", "connection id: the client's or the forwarder's (required)")
	fs.DurationVar(&c.Lifetime, "lifetime", nsc.DefaultTokenLifetime, "new token lifetime")
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	if c.ID == "" {
		return nil, usagef("--id is required")
	}
	if c.Lifetime <= 0 {
		return nil, usagef("--lifetime must be positive")
	}
	return c, nil
}

func parseClose(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &byIDCmd{}
	c.register(fs, e, false)
	fs.StringVar(&c.ID, "id", "", "connection id: the client's or the forwarder's (required)")
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	if c.ID == "" {
		return nil, usagef("--id is required")
	}
	return c, nil
}

func (c *byIDCmd) run(ctx context.Context, e env) error {
	lifetime := c.Lifetime // refresh: the new token lifetime
	if !c.refresh {
		lifetime = nsc.DefaultTokenLifetime
	}
	cc, ctx, done, err := c.session(ctx, lifetime)
	if err != nil {
		return err
	}
	defer done()
	conns, err := nsc.List(ctx, networkservice.NewMonitorConnectionClient(cc), nil)
	if err != nil {
		return err
	}
	conn := findConn(conns, c.ID)
	if conn == nil {
		return status.Errorf(codes.NotFound, "no connection with id %q among %d", c.ID, len(conns))
	}
	client := networkservice.NewNetworkServiceClient(cc)
	if c.refresh {
		out, err := nsc.Refresh(ctx, client, inClientFrame(conn, c.Forwarder), c.Lifetime)
		if err != nil {
			return err
		}
		return printConn(e, c.Output, out, c.Forwarder)
	}
	if err := closeConn(ctx, client, conn, c.Forwarder); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "closed %s\n", clientID(conn))
	return nil
}

// findConn finds id among the monitor's connections: the map key, the
// connection id or any path segment's id.
func findConn(conns map[string]*networkservice.Connection, id string) *networkservice.Connection {
	if c, ok := conns[id]; ok {
		return c
	}
	for _, k := range slices.Sorted(maps.Keys(conns)) {
		c := conns[k]
		if c.GetId() == id {
			return c
		}
		for _, s := range c.GetPath().GetPathSegments() {
			if s.GetId() == id {
				return c
			}
		}
	}
	return nil
}

// forwarderIndex returns the index of the forwarder's segment: the one
// called name, else the first carrying metrics, else the one after the
// client's.
func forwarderIndex(conn *networkservice.Connection, name string) int {
	segs := conn.GetPath().GetPathSegments()
	if name != "" {
		return slices.IndexFunc(segs, func(s *networkservice.PathSegment) bool { return s.GetName() == name })
	}
	if i := slices.IndexFunc(segs, func(s *networkservice.PathSegment) bool { return len(s.GetMetrics()) > 0 }); i >= 0 {
		return i
	}
	if len(segs) > 1 {
		return 1
	}
	return -1
}

// inClientFrame returns conn as its caller sees it when talking to the
// forwarder: Index on the segment before the forwarder's. nsmctl speaks
// directly to the forwarder, so with the default that is segment 0.
func inClientFrame(conn *networkservice.Connection, fwdName string) *networkservice.Connection {
	c := conn.Clone()
	idx := 0
	if fwdName != "" {
		if i := forwarderIndex(c, fwdName); i > 0 {
			idx = i - 1
		}
	}
	if segs := c.GetPath().GetPathSegments(); idx < len(segs) {
		c.Path.Index = uint32(idx)
		c.Id = segs[idx].GetId()
	}
	return c
}

func closeConn(ctx context.Context, client networkservice.NetworkServiceClient, conn *networkservice.Connection, fwdName string) error {
	c := inClientFrame(conn, fwdName)
	if c.GetPath().GetIndex() == 0 {
		return nsc.Close(ctx, client, c)
	}
	if _, err := client.Close(ctx, c); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// ---- list / monitor ----

type listCmd struct{ common }

func parseList(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &listCmd{}
	c.register(fs, e, true)
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *listCmd) run(ctx context.Context, e env) error {
	cc, ctx, done, err := c.session(ctx, nsc.DefaultTokenLifetime)
	if err != nil {
		return err
	}
	defer done()
	conns, err := nsc.List(ctx, networkservice.NewMonitorConnectionClient(cc), nil)
	if err != nil {
		return err
	}
	infos := make([]connInfo, 0, len(conns))
	for _, k := range slices.Sorted(maps.Keys(conns)) {
		infos = append(infos, newConnInfo(conns[k], c.Forwarder))
	}
	if c.Output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(infos)
	}
	printTable(e.stdout, infos)
	return nil
}

type monitorCmd struct{ common }

func parseMonitor(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &monitorCmd{}
	c.register(fs, e, true)
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	return c, nil
}

type eventOut struct {
	Type        string     `json:"type"`
	Connections []connInfo `json:"connections"`
}

func (c *monitorCmd) run(ctx context.Context, e env) error {
	cc, closeFn, err := c.dial(ctx, nsc.DefaultTokenLifetime)
	if err != nil {
		return err
	}
	defer closeFn()
	enc := json.NewEncoder(e.stdout)
	err = nsc.Watch(ctx, networkservice.NewMonitorConnectionClient(cc), nil, func(ev *networkservice.ConnectionEvent) error {
		out := eventOut{Type: ev.GetType().String(), Connections: []connInfo{}}
		for _, k := range slices.Sorted(maps.Keys(ev.GetConnections())) {
			out.Connections = append(out.Connections, newConnInfo(ev.GetConnections()[k], c.Forwarder))
		}
		if c.Output == "json" {
			return enc.Encode(out)
		}
		if len(out.Connections) == 0 {
			fmt.Fprintf(e.stdout, "%s (no connections)\n", out.Type)
		}
		for _, ci := range out.Connections {
			fmt.Fprintf(e.stdout, "%s %s\n", out.Type, ci.line())
		}
		return nil
	})
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil // interrupted: a normal end of monitoring
	}
	return err
}

// sendFile passes the file at path by descriptor (grpcfd) with each
// Request, as NSM's sendfd client does for inode:// URLs.
type sendFile struct {
	networkservice.NetworkServiceClient
	path string
}

func (s sendFile) Request(ctx context.Context, req *networkservice.NetworkServiceRequest, opts ...grpc.CallOption) (*networkservice.Connection, error) {
	creds := grpcfd.PerRPCCredentials(grpcfd.PerRPCCredentialsFromCallOptions(opts...))
	if sender, ok := grpcfd.FromPerRPCCredentials(creds); ok {
		errc := sender.SendFilename(s.path)
		// Reported once sent with the Request (or the connection closed).
		go func() {
			for range errc {
			}
		}()
	}
	return s.NetworkServiceClient.Request(ctx, req, append(opts, grpc.PerRPCCredentials(creds))...)
}
