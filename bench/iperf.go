package bench

import (
	"encoding/json"
	"errors"
	"fmt"
)

// IperfResult is what the harness takes from iperf3's JSON (-J) client
// output: the receiver's view.
type IperfResult struct {
	Seconds float64
	// BitsPerSecond is the payload rate the receiver saw.
	BitsPerSecond float64
	// Packets received (UDP only): sent minus lost.
	Packets uint64
	Lost    uint64
}

// PPS returns the received packets per second (UDP).
func (r IperfResult) PPS() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Packets) / r.Seconds
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         uint64  `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Packets       uint64  `json:"packets"`
	LostPackets   uint64  `json:"lost_packets"`
}

// ParseIperf3 parses iperf3 3.x client JSON output. For UDP it reads
// end.sum_received (3.10+) or, on older versions, end.sum, whose packets
// count includes the lost ones.
func ParseIperf3(data []byte) (IperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		Start struct {
			TestStart struct {
				Protocol string `json:"protocol"`
			} `json:"test_start"`
		} `json:"start"`
		End struct {
			Sum         *iperfSum `json:"sum"`
			SumReceived *iperfSum `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 json: %w", err)
	}
	if doc.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	sum := doc.End.SumReceived
	if sum == nil {
		sum = doc.End.Sum
	}
	if sum == nil || sum.Seconds <= 0 {
		return IperfResult{}, errors.New("iperf3 json: no end.sum_received or end.sum")
	}
	out := IperfResult{Seconds: sum.Seconds, BitsPerSecond: sum.BitsPerSecond}
	if doc.Start.TestStart.Protocol == "UDP" {
		out.Lost = sum.LostPackets
		if sum.Packets >= sum.LostPackets {
			out.Packets = sum.Packets - sum.LostPackets
		}
	}
	return out, nil
}
