package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

const metricsAddr = "127.0.0.1:9781"

// scrape fetches /metrics from nsmfwd, which listens on the node
// namespace's loopback, with bash's /dev/tcp inside that namespace.
func (w *world) scrape() string {
	w.t.Helper()
	host, port, _ := strings.Cut(metricsAddr, ":")
	script := fmt.Sprintf(`exec 3<>/dev/tcp/%s/%s && printf 'GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && cat <&3`, host, port)
	out, err := nstest.Exec(w.t, w.node, "bash", "-c", script)
	if err != nil {
		w.t.Fatalf("scrape: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "HTTP/1.0 200") {
		w.t.Fatalf("scrape: %s", out)
	}
	return out
}

// sample returns the value of the series name whose labels include all of
// labels (`key="value"` strings), or -1.
func sample(body, name string, labels ...string) float64 {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// TestMetricsScrape scrapes the real forwarder's /metrics during a
// connection with traffic: the per-connection counters rise with the
// packets sent and disappear after Close.
func TestMetricsScrape(t *testing.T) {
	w := newWorld(t, "e2em")
	w.fwdEnv = []string{"PROMETHEUS=true", "NSM_PROMETHEUS_LISTEN_ON=" + metricsAddr}
	w.startNSE("NSM_CIDR_PREFIX=169.254.0.0/16")
	w.startForwarder()
	_, client := w.dialForwarder()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := nsc.Request(ctx, client, nsc.RequestOptions{
		NetworkService: "icmp-responder", NetNSURL: nsc.NetNSURLFromPath(w.clientPath), IfName: "nsm0",
	})
	if err != nil {
		t.Fatal(err)
	}
	id := conn.GetPath().GetPathSegments()[1].GetId()
	byID := `conn_id="` + id + `"`
	rx, tx := `direction="rx"`, `direction="tx"`

	before := w.scrape()
	if v := sample(before, "nsmfwd_connections", `dataplane="kernel"`); v != 1 {
		t.Fatalf("nsmfwd_connections = %v, want 1", v)
	}
	if v := sample(before, "nsmfwd_dataplane_ready", `dataplane="kernel"`); v != 1 {
		t.Fatalf("nsmfwd_dataplane_ready = %v, want 1", v)
	}
	rx0 := sample(before, "nsmfwd_connection_packets_total", byID, rx, `client_interface="nsm0"`, `network_service="icmp-responder"`)
	tx0 := sample(before, "nsmfwd_connection_packets_total", byID, tx)
	if rx0 < 0 || tx0 < 0 {
		t.Fatalf("no per-connection series for %s:\n%s", id, before)
	}

	const pings = 20
	ep := netip.MustParsePrefix(conn.GetContext().GetIpContext().GetDstIpAddrs()[0]).Addr()
	if out, err := nstest.Exec(t, w.client, "ping", "-c", strconv.Itoa(pings), "-i", "0.01", "-W", "2", "-s", "100", ep.String()); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	after := w.scrape()
	rx1 := sample(after, "nsmfwd_connection_packets_total", byID, rx)
	tx1 := sample(after, "nsmfwd_connection_packets_total", byID, tx)
	if rx1-rx0 < pings || tx1-tx0 < pings {
		t.Fatalf("after %d pings: rx %v -> %v, tx %v -> %v", pings, rx0, rx1, tx0, tx1)
	}
	// 100-byte ICMP payload: at least 142 bytes per frame on the wire.
	if b := sample(after, "nsmfwd_connection_bytes_total", byID, rx); b < pings*142 {
		t.Fatalf("rx bytes %v after %d pings of 142+ bytes", b, pings)
	}
	if v := sample(after, "nsmfwd_request_duration_seconds_count", `mechanism="KERNEL"`, `outcome="ok"`, `kind="new"`); v != 1 {
		t.Fatalf("request histogram count = %v, want 1", v)
	}

	if err := nsc.Close(ctx, client, conn); err != nil {
		t.Fatal(err)
	}
	closed := w.scrape()
	if strings.Contains(closed, byID) {
		t.Fatalf("series of closed connection %s still exported", id)
	}
	if v := sample(closed, "nsmfwd_connections", `dataplane="kernel"`); v != 0 {
		t.Fatalf("nsmfwd_connections = %v after Close, want 0", v)
	}
	if v := sample(closed, "nsmfwd_close_duration_seconds_count", `reason="close"`, `outcome="ok"`); v != 1 {
		t.Fatalf("close histogram count = %v, want 1", v)
	}
}
