package bench

import (
	"math"
	"testing"
)

// Trimmed from iperf 3.12 (Debian 12) client output.
const iperfUDP = `{
	"start": {"test_start": {"protocol": "UDP", "num_streams": 1, "blksize": 64}},
	"end": {
		"sum": {"seconds": 1.000044, "bytes": 36412160, "bits_per_second": 291292328.03, "lost_packets": 44169, "packets": 568940, "sender": true},
		"sum_sent": {"seconds": 1.000044, "bytes": 36412160, "bits_per_second": 291292328.03, "sender": true},
		"sum_received": {"seconds": 1.000044, "bytes": 33584960, "bits_per_second": 268667858.61, "lost_packets": 44169, "packets": 568934, "sender": false}
	}
}`

const iperfTCP = `{
	"start": {"test_start": {"protocol": "TCP", "num_streams": 1}},
	"end": {
		"sum_sent": {"seconds": 1.000151, "bytes": 2120613888, "bits_per_second": 16962349789.18, "sender": true},
		"sum_received": {"seconds": 1.0002, "bytes": 2119000000, "bits_per_second": 16950000000.0, "sender": false}
	}
}`

func TestParseIperf3UDP(t *testing.T) {
	r, err := ParseIperf3([]byte(iperfUDP))
	if err != nil {
		t.Fatal(err)
	}
	if r.Packets != 568934-44169 || r.Lost != 44169 {
		t.Fatalf("packets %d lost %d", r.Packets, r.Lost)
	}
	// Received packets match the received bytes at 64 B each.
	if r.Packets != 33584960/64 {
		t.Fatalf("packets %d, bytes say %d", r.Packets, 33584960/64)
	}
	if pps := r.PPS(); math.Abs(pps-524765/1.000044) > 1 {
		t.Fatalf("pps %v", pps)
	}
}

func TestParseIperf3TCP(t *testing.T) {
	r, err := ParseIperf3([]byte(iperfTCP))
	if err != nil {
		t.Fatal(err)
	}
	if r.BitsPerSecond != 16950000000 || r.Packets != 0 {
		t.Fatalf("%+v", r)
	}
}

func TestParseIperf3OldUDP(t *testing.T) {
	// Before sum_received existed for UDP, end.sum carried the receiver's
	// loss with packets counting the lost ones.
	r, err := ParseIperf3([]byte(`{"start":{"test_start":{"protocol":"UDP"}},"end":{"sum":{"seconds":2,"bits_per_second":1e6,"packets":1000,"lost_packets":100}}}`))
	if err != nil || r.Packets != 900 || r.PPS() != 450 {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestParseIperf3Errors(t *testing.T) {
	for name, in := range map[string]string{
		"iperf error": `{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`,
		"not json":    `warning: something`,
		"no sum":      `{"start":{},"end":{}}`,
	} {
		if _, err := ParseIperf3([]byte(in)); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}
