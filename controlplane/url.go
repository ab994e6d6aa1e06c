package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// ParseURL splits an NSM_LISTEN_ON / NSM_CONNECT_TO value into a network
// and an address for net.Listen: "unix:///path" gives ("unix", "/path"),
// "tcp://host:port" and a plain "host:port" give ("tcp", "host:port").
func ParseURL(s string) (network, address string, err error) {
	if s == "" {
		return "", "", fmt.Errorf("parse url: empty")
	}
	if !strings.Contains(s, "://") && !strings.HasPrefix(s, "unix:") {
		if err := checkHostPort(s); err != nil {
			return "", "", fmt.Errorf("parse url %q: %w", s, err)
		}
		return "tcp", s, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", "", fmt.Errorf("parse url %q: %w", s, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Host != "" {
			return "", "", fmt.Errorf("parse url %q: unix URL with host %q, want unix:///absolute/path", s, u.Host)
		}
		if !strings.HasPrefix(u.Path, "/") {
			return "", "", fmt.Errorf("parse url %q: unix socket path must be absolute", s)
		}
		return "unix", u.Path, nil
	case "tcp":
		if u.Path != "" && u.Path != "/" {
			return "", "", fmt.Errorf("parse url %q: tcp URL with a path", s)
		}
		if err := checkHostPort(u.Host); err != nil {
			return "", "", fmt.Errorf("parse url %q: %w", s, err)
		}
		return "tcp", u.Host, nil
	default:
		return "", "", fmt.Errorf("parse url %q: scheme %q is neither unix nor tcp", s, u.Scheme)
	}
}

func checkHostPort(hostport string) error {
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q: want a number from 0 to 65535", port)
	}
	return nil
}

// Dial connects to rawURL (see ParseURL) and waits up to timeout for the
// connection to be ready. Transport credentials are plaintext unless opts
// give others (identity.Identity.DialOptions: mTLS with SPIFFE).
func Dial(ctx context.Context, rawURL string, timeout time.Duration, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	cc, err := NewClient(rawURL, opts...)
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cc.Connect()
	for {
		st := cc.GetState()
		if st == connectivity.Ready {
			return cc, nil
		}
		if !cc.WaitForStateChange(ctx, st) {
			_ = cc.Close()
			return nil, fmt.Errorf("dial %s: %w (last state %s)", rawURL, ctx.Err(), st)
		}
	}
}

// NewClient returns a client connection to an NSM URL without waiting for
// it: calls fail fast with Unavailable while the peer is down and succeed
// once it is up, as a forwarder that starts before its NSMgr needs.
func NewClient(rawURL string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	network, address, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	target := "passthrough:///" + address
	if network == "unix" {
		target = "unix://" + address
	}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// A next hop that comes back (NSMgr restarted) is found again within
		// ~2 s instead of grpc's default backoff of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}, opts...)
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", rawURL, err)
	}
	return cc, nil
}
