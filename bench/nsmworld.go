package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
)

// benchService is the network service nse serves in the harness.
const benchService = "bench"

// nsmWorld is nsmfwd deployed as on a node: the real binary in a node
// namespace (nsenter --net), nse in the endpoint namespace (ip netns exec),
// and an NSC-like gRPC client on the forwarder's unix socket.
type nsmWorld struct {
	e                      *Env
	tag, name, dir         string
	node, client, endpoint string
	nse, fwd               *Proc
	cc                     *grpc.ClientConn
	nsc                    networkservice.NetworkServiceClient
	// failures counts Requests and Closes that failed and were retried.
	failures atomic.Int64
}

// maxAttempts bounds the attempts of one Request or Close. An NSC retries a
// failed Request; the harness does too, so that one transient failure does
// not end a series, and reports how many there were.
const maxAttempts = 3

// newNSMWorld creates the namespaces and starts nse; the forwarder is
// started by startForwarder.
func newNSMWorld(ctx context.Context, e *Env, tag string) (*nsmWorld, error) {
	// Large enough for 1,000 connections and more (two addresses each).
	return newNSMWorldCIDR(ctx, e, tag, "169.254.0.0/16,fd00:5::/112")
}

// newNSMWorldCIDR is newNSMWorld with the endpoint handing out addresses
// from cidr (NSM_CIDR_PREFIX).
func newNSMWorldCIDR(ctx context.Context, e *Env, tag, cidr string) (*nsmWorld, error) {
	w := &nsmWorld{e: e, tag: tag, name: e.ID + "-" + tag, dir: filepath.Join(e.Dir, tag)}
	if err := os.MkdirAll(w.dir, 0o750); err != nil {
		return nil, fmt.Errorf("world dir: %w", err)
	}
	var err error
	for _, ns := range []struct {
		p    *string
		role string
	}{{&w.node, tag + "-node"}, {&w.client, tag + "-client"}, {&w.endpoint, tag + "-ep"}} {
		if *ns.p, err = e.NewNS(ctx, ns.role); err != nil {
			return nil, err
		}
	}
	sock := filepath.Join(w.dir, "nse.sock")
	w.nse, err = e.Start(tag+"-nse", []string{
		"NSM_NAME=nse-" + w.name,
		"NSM_LISTEN_ON=unix://" + sock,
		"NSM_SERVICE_NAMES=" + benchService,
		"NSM_CIDR_PREFIX=" + cidr,
		"NSM_LOG_LEVEL=WARN",
	}, inNS(w.endpoint, filepath.Join(e.Bin, "nse"))...)
	if err != nil {
		return nil, err
	}
	if err := waitFile(ctx, sock, w.nse, 20*time.Second); err != nil {
		return nil, err
	}
	return w, nil
}

// startForwarder starts nsmfwd in the node namespace with an empty state
// and connects to it; extra adds to its environment (the dataplane).
func (w *nsmWorld) startForwarder(ctx context.Context, extra ...string) error {
	sock := filepath.Join(w.dir, "fwd.sock")
	_ = os.Remove(sock)
	p, err := w.e.Start(w.tag+"-nsmfwd", append([]string{
		"NSM_NAME=" + w.name,
		"NSM_LISTEN_ON=unix://" + sock,
		"NSM_CONNECT_TO=unix://" + filepath.Join(w.dir, "nse.sock"),
		"NSM_STATE_DIR=" + filepath.Join(w.dir, "state"),
		"NSM_BPF_PIN_DIR=" + w.e.PinDir,
		"NSM_LOG_LEVEL=WARN",
		"NSM_INSECURE=true", // no SPIRE agent here; nsmfwd refuses to start without one or this
	}, extra...), "nsenter", "--net="+NSPath(w.node), filepath.Join(w.e.Bin, "nsmfwd"))
	if err != nil {
		return err
	}
	w.fwd = p
	// A local VPP starts before nsmfwd serves.
	if err := waitFile(ctx, sock, p, 60*time.Second); err != nil {
		return err
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial forwarder: %w", err)
	}
	w.cc, w.nsc = cc, networkservice.NewNetworkServiceClient(cc)
	return nil
}

// stopForwarder closes the client and stops nsmfwd gracefully (its vWires
// stay, as in production; close them first).
func (w *nsmWorld) stopForwarder() {
	if w.cc != nil {
		_ = w.cc.Close()
		w.cc, w.nsc = nil, nil
	}
	if w.fwd != nil {
		w.fwd.Stop(5 * time.Second)
		w.fwd = nil
	}
}

// request asks for a connection whose client interface is nsm<i> and
// returns it with the time the Request took. The first Requests after a
// start may find the next hop still connecting (Unavailable): those are
// retried for a few seconds, and the retry time is not counted.
func (w *nsmWorld) request(ctx context.Context, i int) (*networkservice.Connection, time.Duration, error) {
	opts := nsc.RequestOptions{
		NetworkService: benchService,
		NetNSURL:       nsc.NetNSURLFromPath(NSPath(w.client)),
		IfName:         fmt.Sprintf("nsm%d", i),
	}
	deadline := time.Now().Add(5 * time.Second)
	attempt := 0
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t0 := time.Now()
		conn, err := nsc.Request(rctx, w.nsc, opts)
		d := time.Since(t0)
		cancel()
		if status.Code(err) == codes.Unavailable && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			if attempt++; attempt < maxAttempts && ctx.Err() == nil {
				w.failures.Add(1)
				w.e.Log.WarnContext(ctx, "request failed, retrying", "if_name", opts.IfName, "err", err)
				continue
			}
			return nil, d, fmt.Errorf("request nsm%d: %w", i, err)
		}
		return conn, d, nil
	}
}

// close closes conn and returns the time the successful Close took.
func (w *nsmWorld) close(ctx context.Context, conn *networkservice.Connection) (time.Duration, error) {
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t0 := time.Now()
		err := nsc.Close(cctx, w.nsc, conn)
		d := time.Since(t0)
		cancel()
		if err != nil && attempt < maxAttempts && ctx.Err() == nil {
			w.failures.Add(1)
			w.e.Log.WarnContext(ctx, "close failed, retrying", "conn_id", conn.GetId(), "err", err)
			continue
		}
		return d, err
	}
}

// kernelEBPF is the nsmfwd kernel dataplane row: veth pairs and the eBPF tc
// cross-connect (bpf_redirect_peer).
type kernelEBPF struct{}

func (kernelEBPF) Key() string         { return EBPFKey }
func (kernelEBPF) Title() string       { return "nsmfwd kernel: veth + eBPF cross-connect" }
func (kernelEBPF) Unavailable() string { return "" }

func (kernelEBPF) Setup(ctx context.Context, e *Env) (Path, func() error, error) {
	return setupForwarderRow(ctx, e, "ebpf", nil, nil)
}

// setupForwarderRow starts nsmfwd (with extra environment) between a
// client and an endpoint namespace and requests one connection; stop,
// when set, runs after the forwarder stopped (a VPP it left running).
func setupForwarderRow(ctx context.Context, e *Env, tag string, extra func(w *nsmWorld) []string, stop func(w *nsmWorld)) (Path, func() error, error) {
	w, err := newNSMWorld(ctx, e, tag)
	if err != nil {
		return Path{}, nil, err
	}
	var env []string
	if extra != nil {
		env = extra(w)
	}
	stopDP := func() error { return nil }
	if stop != nil {
		stopDP = e.Once(tag+" dataplane", func() error { stop(w); return nil })
	}
	if err := w.startForwarder(ctx, env...); err != nil {
		return Path{}, nil, err
	}
	conn, _, err := w.request(ctx, 0)
	if err != nil {
		return Path{}, nil, err
	}
	dsts := conn.GetContext().GetIpContext().GetDstIpAddrs()
	var addr netip.Addr
	for _, d := range dsts {
		if p, err := netip.ParsePrefix(d); err == nil && p.Addr().Is4() {
			addr = p.Addr()
			break
		}
	}
	if !addr.IsValid() {
		return Path{}, nil, fmt.Errorf("connection has no IPv4 endpoint address: %v", dsts)
	}
	teardown := e.Once(tag+" world", func() error {
		defer func() { _ = stopDP() }()
		defer w.stopForwarder()
		_, err := w.close(context.Background(), conn)
		return err
	})
	return Path{ClientNS: w.client, ServerNS: w.endpoint, ServerAddr: addr}, teardown, nil
}
