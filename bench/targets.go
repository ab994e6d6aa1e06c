package bench

import "fmt"

// TargetLive is the connection count the setup and memory targets refer to.
const TargetLive = 1000

// EvaluateTargets compares r with the targets of the benchmark issue. They
// are reported, not asserted: a figure that was not measured has Met nil.
func EvaluateTargets(r *Results) []Target {
	var out []Target
	cp := r.ControlPlane
	at, at10 := cp.level(TargetLive), cp.level(10)
	missing := fmt.Sprintf("not measured: no control-plane level with %d live connections", TargetLive)
	if cp == nil || cp.Status != StatusMeasured {
		missing = "control-plane series not measured"
		if cp != nil && cp.Reason != "" {
			missing += ": " + cp.Reason
		}
	}
	add := func(name, want string, ok bool, measured string, met bool, note string) {
		t := Target{Name: name, Want: want, Note: note}
		if ok {
			t.Measured, t.Met = measured, &met
		} else {
			t.Measured = "—"
		}
		out = append(out, t)
	}
	if at != nil {
		p50, p99 := at.SetupP50.Median, at.SetupP99.Median
		add("setup p50 at 1,000 live", "≤ 10 ms", true, fmt.Sprintf("%.2f ms", p50), p50 <= 10, "")
		add("setup p99 at 1,000 live", "≤ 50 ms", true, fmt.Sprintf("%.2f ms", p99), p99 <= 50, "")
		if at10 != nil && at10.SetupP99.Median > 0 {
			q := p99 / at10.SetupP99.Median
			add("setup p99 at 1,000 / at 10", "≤ 2×", true, fmt.Sprintf("%.2f× (%.2f / %.2f ms)", q, p99, at10.SetupP99.Median), q <= 2, "")
		} else {
			add("setup p99 at 1,000 / at 10", "≤ 2×", false, "", false, "no level with 10 live connections")
		}
		kib := at.RSSPerConnKiB.Median
		add("forwarder memory per connection", "≤ 50 KiB", true, fmt.Sprintf("%.1f KiB", kib), kib <= 50, "VmRSS growth from the idle forwarder / 1,000")
	} else {
		add("setup p50 at 1,000 live", "≤ 10 ms", false, "", false, missing)
		add("setup p99 at 1,000 live", "≤ 50 ms", false, "", false, missing)
		add("setup p99 at 1,000 / at 10", "≤ 2×", false, "", false, missing)
		add("forwarder memory per connection", "≤ 50 KiB", false, "", false, missing)
	}

	if e := r.Row(EBPFKey); e != nil && e.Status == StatusMeasured {
		if rt, ok := e.Ratios[MetricUDP64]; ok {
			add("eBPF cross-connect vs reference, 64 B pps", "≥ 1.5×", true, fmt.Sprintf("%.2f×", rt.Median), rt.Median >= 1.5, "")
		} else {
			add("eBPF cross-connect vs reference, 64 B pps", "≥ 1.5×", false, "", false, "reference row not measured")
		}
	} else {
		add("eBPF cross-connect vs reference, 64 B pps", "≥ 1.5×", false, "", false, rowReason(r, EBPFKey))
	}

	xdp, afp := r.Row(VPPAFXDPKey), r.Row(VPPAFPacketKey)
	if xdp != nil && afp != nil && xdp.Status == StatusMeasured && afp.Status == StatusMeasured {
		rt := Ratios(xdp.Metrics[MetricUDP64], afp.Metrics[MetricUDP64])
		add("VPP AF_XDP vs VPP af_packet, 64 B pps", "≥ 2×", rt.Valid(), fmt.Sprintf("%.2f×", rt.Median), rt.Median >= 2, "")
	} else {
		note := rowReason(r, VPPAFXDPKey)
		if afp == nil || afp.Status != StatusMeasured {
			note = rowReason(r, VPPAFPacketKey)
		}
		add("VPP AF_XDP vs VPP af_packet, 64 B pps", "≥ 2×", false, "", false, note)
	}
	return out
}

func rowReason(r *Results, key string) string {
	d := r.Row(key)
	switch {
	case d == nil:
		return key + " row not run"
	case d.Reason != "":
		return key + " " + d.Status + ": " + d.Reason
	}
	return key + " " + d.Status
}
