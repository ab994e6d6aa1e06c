package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadConfigDefaults(t *testing.T) {
	c, err := loadConfig(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "nse" || c.ListenOn.String() != "unix:///var/lib/networkservicemesh/nse.sock" || c.ServiceNames != nil ||
		c.MaxTokenLifetime != 10*time.Minute || c.LogLevel != slog.LevelInfo || c.IfNamePrefix != "nse-" || c.MTU != 0 {
		t.Fatalf("defaults %+v", c)
	}
	want := []netip.Prefix{netip.MustParsePrefix("169.254.0.0/24"), netip.MustParsePrefix("fd00:5::/120")}
	if !slices.Equal(c.CIDRPrefix, want) {
		t.Fatalf("CIDRs %v, want %v", c.CIDRPrefix, want)
	}
}

func TestLoadConfig(t *testing.T) {
	c, err := loadConfig(env(map[string]string{
		"NSM_NAME":               "icmp",
		"NSM_LISTEN_ON":          "tcp://127.0.0.1:5002",
		"NSM_SERVICE_NAMES":      "a, b,,c",
		"NSM_CIDR_PREFIX":        "[172.16.1.100/31, fd00::/64], 10.0.0.0/8", // second IPv4: refused below
		"NSM_LOG_LEVEL":          "trace",
		"NSM_MAX_TOKEN_LIFETIME": "1h",
	}))
	if err == nil || !strings.Contains(err.Error(), "NSM_CIDR_PREFIX") {
		t.Fatalf("want a NSM_CIDR_PREFIX error, got %v (%+v)", err, c)
	}
	c, err = loadConfig(env(map[string]string{
		"NSM_NAME":               "icmp",
		"NSM_LISTEN_ON":          "tcp://127.0.0.1:5002",
		"NSM_SERVICE_NAMES":      "a, b,,c",
		"NSM_CIDR_PREFIX":        "[172.16.1.101/31, fd00::/64]",
		"NSM_LOG_LEVEL":          "trace",
		"NSM_MAX_TOKEN_LIFETIME": "1h",
		"NSM_MTU":                "1400",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "icmp" || c.ListenOn.Host != "127.0.0.1:5002" || !slices.Equal(c.ServiceNames, []string{"a", "b", "c"}) ||
		c.LogLevel != slog.LevelDebug || c.MaxTokenLifetime != time.Hour || c.MTU != 1400 {
		t.Fatalf("config %+v", c)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("172.16.1.100/31"), netip.MustParsePrefix("fd00::/64")}; !slices.Equal(c.CIDRPrefix, want) {
		t.Fatalf("CIDRs %v, want %v", c.CIDRPrefix, want)
	}

	for k, v := range map[string]string{
		"NSM_LISTEN_ON":          "http://x",
		"NSM_CIDR_PREFIX":        "[10.0.0.0/8",
		"NSM_LOG_LEVEL":          "loud",
		"NSM_MAX_TOKEN_LIFETIME": "-1s",
		"NSM_MTU":                "big",
	} {
		if _, err := loadConfig(env(map[string]string{k: v})); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: error %v", k, v, err)
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := mainErr([]string{"--help"}, env(nil), &out, &errb); code != 0 {
		t.Fatalf("exit %d", code)
	}
	typ := reflect.TypeFor[Config]()
	for i := range typ.NumField() {
		if name := typ.Field(i).Tag.Get("env"); name != "" && !strings.Contains(out.String(), name) {
			t.Errorf("help lacks %s", name)
		}
	}
	if code := mainErr([]string{"--bogus"}, env(nil), &out, &errb); code != 2 {
		t.Fatalf("bad argument: exit %d", code)
	}
	if code := mainErr(nil, env(map[string]string{"NSM_LOG_LEVEL": "loud"}), &out, &errb); code != 2 {
		t.Fatalf("bad config: exit %d", code)
	}
}

func TestRunServesAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "nse.sock")

	// A stale socket from a dead process is removed.
	if err := os.MkdirAll(filepath.Dir(sock), 0o750); err != nil {
		t.Fatal(err)
	}
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()

	cfg, err := loadConfig(env(map[string]string{
		"NSM_LISTEN_ON":     "unix://" + sock,
		"NSM_SERVICE_NAMES": "svc",
		"NSM_CIDR_PREFIX":   "10.9.0.0/30",
		"NSM_NETNS_URL":     "inode://1/2",
	}))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log, ready) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("run: %v", err)
	}

	// A second instance on the same live socket refuses to start.
	if err := run(t.Context(), cfg, slog.New(slog.DiscardHandler), nil); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second run: %v", err)
	}

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client := networkservice.NewNetworkServiceClient(cc)
	conn, err := nsc.Request(t.Context(), client, nsc.RequestOptions{NetworkService: "svc", NetNSURL: "file:///run/netns/c"})
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.GetContext().GetIpContext().GetSrcIpAddrs(); !slices.Equal(got, []string{"10.9.0.2/32"}) {
		t.Fatalf("src addrs %v", got)
	}
	if got := conn.GetMechanism().GetParameters()["inodeURL"]; got != "inode://1/2" {
		t.Fatalf("endpoint netns %q", got)
	}
	_, err = nsc.Request(t.Context(), client, nsc.RequestOptions{NetworkService: "other", NetNSURL: "file:///run/netns/c"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("other service: %v", err)
	}
	_ = cc.Close()

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}
