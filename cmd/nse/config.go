package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/nsmfwd/nsmfwd/internal/envconfig"
)

// Config is the endpoint's configuration, read from NSM_* environment
// variables (names as in NSM's cmd-nse-icmp-responder where they mean the
// same). The tagged fields are read by internal/envconfig; ListenOn and
// CIDRPrefix are parsed from their raw forms by loadConfig.
type Config struct {
	Name             string        `env:"NSM_NAME" default:"nse" desc:"name of the endpoint: its path segment name"`
	ListenOnRaw      string        `env:"NSM_LISTEN_ON" default:"unix:///var/lib/networkservicemesh/nse.sock" desc:"URL to serve NetworkService on: unix:///PATH or tcp://HOST:PORT"`
	ServiceNames     []string      `env:"NSM_SERVICE_NAMES" default:"" desc:"comma-separated network services accepted; empty accepts any"`
	CIDRPrefixRaw    string        `env:"NSM_CIDR_PREFIX" default:"169.254.0.0/24,fd00:5::/120" desc:"comma-separated CIDR prefixes to assign point-to-point addresses from (at most one IPv4 and one IPv6; NSM's [a,b] grouping is accepted and flattened)"`
	NetNSURL         string        `env:"NSM_NETNS_URL" default:"" desc:"namespace URL the endpoint gives in its KERNEL mechanism; empty: inode://DEV/INO of its own network namespace"`
	IfNamePrefix     string        `env:"NSM_IFNAME_PREFIX" default:"nse-" desc:"prefix of the endpoint-side interface name when the request does not name it (at most 11 characters)"`
	VLANID           uint32        `env:"NSM_VLAN_ID" default:"0" desc:"1-4094: be a remote-VLAN endpoint (that VLAN of the physical network, reached through the forwarder's VLAN mechanism) instead of a KERNEL one"`
	MTU              uint32        `env:"NSM_MTU" default:"0" desc:"MTU set in the connection context when the request leaves it 0; 0 leaves it unset"`
	MaxTokenLifetime time.Duration `env:"NSM_MAX_TOKEN_LIFETIME" default:"10m" desc:"lifetime of the endpoint's path segment token"`
	LogLevel         slog.Level    `env:"NSM_LOG_LEVEL" default:"INFO" desc:"log level: TRACE, DEBUG, INFO, WARN or ERROR"`
	SpiffeSocket     string        `env:"SPIFFE_ENDPOINT_SOCKET" default:"" desc:"SPIFFE Workload API: serve mutual TLS with the X.509 SVID got there; empty serves plaintext"`

	ListenOn   *url.URL
	CIDRPrefix []netip.Prefix
}

// loadConfig reads the configuration through getenv; an unset or empty
// variable takes its default.
func loadConfig(getenv func(string) string) (Config, error) {
	var c Config
	lookup := func(k string) (string, bool) {
		v := strings.TrimSpace(getenv(k))
		return v, v != ""
	}
	if err := envconfig.Load(&c, lookup); err != nil {
		return Config{}, err
	}
	var err error
	if c.ListenOn, err = parseListenURL(c.ListenOnRaw); err != nil {
		return Config{}, fmt.Errorf("NSM_LISTEN_ON=%q: %w", c.ListenOnRaw, err)
	}
	if c.CIDRPrefix, err = parseCIDRs(c.CIDRPrefixRaw); err != nil {
		return Config{}, fmt.Errorf("NSM_CIDR_PREFIX=%q: %w", c.CIDRPrefixRaw, err)
	}
	if c.MaxTokenLifetime <= 0 {
		return Config{}, fmt.Errorf("NSM_MAX_TOKEN_LIFETIME=%v: must be positive", c.MaxTokenLifetime)
	}
	return c, nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "nse: a minimal NSM network service endpoint (KERNEL mechanism, point-to-point IPAM).\n")
	fmt.Fprintf(w, "Run it inside the endpoint's network namespace (ip netns exec NS nse).\n\nEnvironment:\n")
	envconfig.Usage(w, &Config{})
}

func splitList(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseCIDRs reads NSM's CIDR list: prefixes separated by commas, spaces
// ignored, optionally grouped in brackets ("[a,b],c"). Host bits are
// masked, as net.ParseCIDR does for NSM.
func parseCIDRs(v string) ([]netip.Prefix, error) {
	v = strings.ReplaceAll(v, " ", "")
	if strings.Count(v, "[") != strings.Count(v, "]") {
		return nil, fmt.Errorf("unbalanced brackets")
	}
	var out []netip.Prefix
	var have4, have6 bool
	for _, s := range splitList(strings.NewReplacer("[", "", "]", "").Replace(v)) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		p = p.Masked()
		is4 := p.Addr().Is4()
		if (is4 && have4) || (!is4 && have6) {
			return nil, fmt.Errorf("%v: only one IPv4 and one IPv6 prefix are supported", p)
		}
		have4, have6 = have4 || is4, have6 || !is4
		out = append(out, p)
	}
	return out, nil
}

func parseListenURL(v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" {
			return nil, fmt.Errorf("unix URL without a path")
		}
	case "tcp":
		if u.Host == "" {
			return nil, fmt.Errorf("tcp URL without host:port")
		}
	default:
		return nil, fmt.Errorf("scheme %q is neither unix nor tcp", u.Scheme)
	}
	return u, nil
}
