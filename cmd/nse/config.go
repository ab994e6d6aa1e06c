package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is the endpoint's configuration, read from NSM_* environment
// variables (names as in NSM's cmd-nse-icmp-responder where they mean the
// same).
type Config struct {
	Name             string
	ListenOn         *url.URL
	ServiceNames     []string
	CIDRPrefix       []netip.Prefix
	NetNSURL         string
	IfNamePrefix     string
	MTU              uint32
	MaxTokenLifetime time.Duration
	LogLevel         slog.Level
}

// envVar describes one variable: its name, default, meaning and how it is
// stored in Config.
type envVar struct {
	name, def, desc string
	set             func(c *Config, v string) error
}

var envVars = []envVar{
	{"NSM_NAME", "nse", "name of the endpoint: its path segment name", func(c *Config, v string) error {
		if v == "" {
			return fmt.Errorf("empty")
		}
		c.Name = v
		return nil
	}},
	{"NSM_LISTEN_ON", "unix:///var/lib/networkservicemesh/nse.sock", "URL to serve NetworkService on: unix:///PATH or tcp://HOST:PORT", func(c *Config, v string) error {
		u, err := parseListenURL(v)
		c.ListenOn = u
		return err
	}},
	{"NSM_SERVICE_NAMES", "", "comma-separated network services accepted; empty accepts any", func(c *Config, v string) error {
		c.ServiceNames = splitList(v)
		return nil
	}},
	{"NSM_CIDR_PREFIX", "169.254.0.0/24,fd00:5::/120", "comma-separated CIDR prefixes to assign point-to-point addresses from (at most one IPv4 and one IPv6; NSM's [a,b] grouping is accepted and flattened)", func(c *Config, v string) error {
		p, err := parseCIDRs(v)
		c.CIDRPrefix = p
		return err
	}},
	{"NSM_NETNS_URL", "", "namespace URL the endpoint gives in its KERNEL mechanism; empty: inode://DEV/INO of its own network namespace", func(c *Config, v string) error {
		c.NetNSURL = v
		return nil
	}},
	{"NSM_IFNAME_PREFIX", "nse-", "prefix of the endpoint-side interface name when the request does not name it (at most 11 characters)", func(c *Config, v string) error {
		c.IfNamePrefix = v
		return nil
	}},
	{"NSM_MTU", "0", "MTU set in the connection context when the request leaves it 0; 0 leaves it unset", func(c *Config, v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		c.MTU = uint32(n)
		return err
	}},
	{"NSM_MAX_TOKEN_LIFETIME", "10m", "lifetime of the endpoint's path segment token", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err == nil && d <= 0 {
			err = fmt.Errorf("must be positive")
		}
		c.MaxTokenLifetime = d
		return err
	}},
	{"NSM_LOG_LEVEL", "INFO", "log level: TRACE, DEBUG, INFO, WARN or ERROR", func(c *Config, v string) error {
		l, err := parseLogLevel(v)
		c.LogLevel = l
		return err
	}},
}

// loadConfig reads the configuration through getenv; an unset or empty
// variable takes its default.
func loadConfig(getenv func(string) string) (Config, error) {
	var c Config
	for _, ev := range envVars {
		v := strings.TrimSpace(getenv(ev.name))
		if v == "" {
			v = ev.def
		}
		if err := ev.set(&c, v); err != nil {
			return Config{}, fmt.Errorf("%s=%q: %w", ev.name, v, err)
		}
	}
	return c, nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "nse: a minimal NSM network service endpoint (KERNEL mechanism, point-to-point IPAM).\n")
	fmt.Fprintf(w, "Run it inside the endpoint's network namespace (ip netns exec NS nse).\n\nEnvironment:\n")
	for _, ev := range envVars {
		def := ev.def
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  %s (default %s)\n      %s\n", ev.name, def, ev.desc)
	}
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

func parseLogLevel(v string) (slog.Level, error) {
	switch strings.ToUpper(v) {
	case "TRACE", "DEBUG":
		return slog.LevelDebug, nil
	case "INFO":
		return slog.LevelInfo, nil
	case "WARN", "WARNING":
		return slog.LevelWarn, nil
	case "ERROR", "FATAL", "PANIC":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level")
}
