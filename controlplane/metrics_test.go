package controlplane

import (
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := newEnv(t, "", nil, nil, func(o *Options) { o.Metrics = reg })

	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Request(t.Context(), refreshOf(conn, time.Minute)); err != nil {
		t.Fatal(err)
	}
	bad := newRequest("nsc-2", time.Minute)
	bad.MechanismPreferences = []*networkservice.Mechanism{{Cls: "LOCAL", Type: "CARRIER_PIGEON"}}
	if _, err := e.client.Request(t.Context(), bad); codeOf(err) != codes.InvalidArgument {
		t.Fatalf("bad request: %v", err)
	}

	// Live series, read from the dataplane at scrape time.
	id := conn.GetPath().GetPathSegments()[1].GetId()
	clientIf := "cl-" + id[:8]
	want := `
# HELP nsmfwd_connection_packets_total Packets forwarded on a connection's vWire; direction rx is what the forwarder received from the client, tx what it sent to the client.
# TYPE nsmfwd_connection_packets_total counter
nsmfwd_connection_packets_total{client_interface="` + clientIf + `",conn_id="` + id + `",direction="rx",endpoint_interface="nsm-1",network_service="ns-1"} 10
nsmfwd_connection_packets_total{client_interface="` + clientIf + `",conn_id="` + id + `",direction="tx",endpoint_interface="nsm-1",network_service="ns-1"} 20
# HELP nsmfwd_connections Connections the forwarder holds.
# TYPE nsmfwd_connections gauge
nsmfwd_connections{dataplane="fake"} 1
# HELP nsmfwd_dataplane_ready 1 when the dataplane can build vWires, 0 when not (the grpc health status follows it).
# TYPE nsmfwd_dataplane_ready gauge
nsmfwd_dataplane_ready{dataplane="fake"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"nsmfwd_connection_packets_total", "nsmfwd_connections", "nsmfwd_dataplane_ready"); err != nil {
		t.Fatal(err)
	}
	// Request latency by mechanism, outcome and kind; an unknown mechanism
	// type is labelled "invalid", never with the caller's string.
	for _, labels := range [][]string{{"KERNEL", "ok", "new"}, {"KERNEL", "ok", "refresh"}, {"invalid", "error", "new"}} {
		if n := histCount(t, reg, "nsmfwd_request_duration_seconds", labels...); n != 1 {
			t.Errorf("request histogram %v has %d observations, want 1", labels, n)
		}
	}

	if _, err := e.client.Close(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	if n := histCount(t, reg, "nsmfwd_close_duration_seconds", "KERNEL", "ok", "close"); n != 1 {
		t.Errorf("close histogram has %d observations, want 1", n)
	}
	// The connection's series are gone with it.
	if n, err := testutil.GatherAndCount(reg, "nsmfwd_connection_packets_total", "nsmfwd_connection_bytes_total", "nsmfwd_connection_drops_total"); err != nil || n != 0 {
		t.Fatalf("%d per-connection series after Close (err %v)", n, err)
	}
}

// histCount returns the sample count of the histogram series name{labels}
// (label values in the order of the metric's label names, sorted).
func histCount(t *testing.T, reg *prometheus.Registry, name string, values ...string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetValue()] = lp.GetName()
			}
			match := true
			for _, v := range values {
				if _, ok := got[v]; !ok {
					match = false
				}
			}
			if match {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}
