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

	vs := r.VPPSmall
	vsMissing := "VPP small-node series not run"
	if vs != nil && vs.Reason != "" {
		vsMissing = "VPP small-node series " + vs.Status + ": " + vs.Reason
	}
	if b := vs.burst(30, false); b != nil && b.SetupP99.N > 0 {
		p99 := b.SetupP99.Max
		add("VPP: 30 concurrent Requests", "all succeed, p99 ≤ 1 s", true,
			fmt.Sprintf("%d of %d failed, p99 ≤ %.0f ms", b.Failed, b.Requests, p99), b.Failed == 0 && p99 <= 1000, "worst round's p99")
	} else {
		add("VPP: 30 concurrent Requests", "all succeed, p99 ≤ 1 s", false, "", false, vsMissing)
	}
	if m := vs.memory(100); m != nil && m.PerConnKiB.N > 0 {
		mib := m.PerConnKiB.Median / 1024
		add("VPP memory per connection at 100", "≤ 4 MiB", true, fmt.Sprintf("%.2f MiB", mib), mib <= 4, "VPP VmRSS growth / 100")
	} else {
		add("VPP memory per connection at 100", "≤ 4 MiB", false, "", false, vsMissing)
	}

	// What VPP's default scheduling on a shared node (poll sleep, nice)
	// costs against busy polling.
	busy := r.Row(VPPAFPacketBusyKey)
	for _, m := range []struct{ metric, name string }{{MetricTCP, "TCP"}, {MetricUDP1500, "UDP 1500 B"}} {
		name := "VPP af_packet, default scheduling vs busy polling, " + m.name
		if busy != nil && afp != nil && busy.Status == StatusMeasured && afp.Status == StatusMeasured {
			rt := Ratios(afp.Metrics[m.metric], busy.Metrics[m.metric])
			add(name, "≥ 0.8×", rt.Valid(), fmt.Sprintf("%.2f×", rt.Median), rt.Median >= 0.8, "")
		} else {
			note := rowReason(r, VPPAFPacketBusyKey)
			if afp == nil || afp.Status != StatusMeasured {
				note = rowReason(r, VPPAFPacketKey)
			}
			add(name, "≥ 0.8×", false, "", false, note)
		}
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
