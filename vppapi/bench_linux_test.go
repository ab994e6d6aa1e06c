package vppapi

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// BenchmarkVPPMemoryPerConnection measures how much VPP's resident memory
// grows per connection, by KERNEL mode and ring size, at 10 and 100 live
// connections (10 only with BENCH_QUICK=1), for make bench. Each
// connection has a client and an endpoint namespace of its own (IPv6 off
// in them: VPP 25.10's af_packet livelock, docs/operations.md) and passes
// a burst of pings before VPP's RSS is read. (A memif's rings are
// allocated only when a peer connects, which would take a second VPP per
// connection: not measured here.) Run it once per size:
//
//	VPP_BIN=/opt/vpp/bin/vpp go test -run '^$' -bench VPPMemory -benchtime 1x ./vppapi/
func BenchmarkVPPMemoryPerConnection(b *testing.B) {
	bin := vppBinary(b)
	for _, v := range []struct {
		name    string
		mode    string
		rings   Rings
		buffers int
		max     int
	}{
		{"af_packet", ModeAFPacket, Rings{}, 0, 100},
		{"af_packet-gso", ModeAFPacket, Rings{AFPacketRxBlock: GSOBlock}, 0, 10},
		// An AF_XDP interface's fill queue holds 256 of VPP's buffers:
		// the default 16384 run out after about 25 connections, 65536 after 94.
		{"af_xdp", ModeAFXDP, Rings{}, 98304, 100},
	} {
		for _, n := range []int{10, 100} {
			if n > v.max || (n > 10 && os.Getenv("BENCH_QUICK") == "1") {
				continue
			}
			b.Run(fmt.Sprintf("%s/conns=%d", v.name, n), func(b *testing.B) {
				for b.Loop() {
					perConn := vppMemory(b, bin, v.mode, v.rings, v.buffers, n)
					b.ReportMetric(perConn, "KiB/conn")
				}
			})
		}
	}
}

func vppMemory(b *testing.B, bin, mode string, rings Rings, buffers, n int) float64 {
	b.StopTimer()
	defer b.StartTimer()
	_, nodePath := nstest.New(b)
	p := startVPPWith(b, bin, nodePath, ProcessOptions{Buffers: buffers})
	vc := dialVPP(b, p)
	d, err := New(context.Background(), Options{Name: "rss", Conn: vc, HostNetNS: nodePath, KernelMode: mode, Rings: rings,
		Buffers: processDefaults(ProcessOptions{Buffers: buffers}).Buffers})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Close() }) // after the Disconnects registered below
	ctx := context.Background()
	time.Sleep(500 * time.Millisecond)
	rss0 := vmRSSKiB(b, p.Pid())
	for i := range n {
		cName, cPath := nstest.New(b)
		eName, ePath := nstest.New(b)
		for _, ns := range []string{cName, eName} {
			if out, err := nstest.Exec(b, ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
				b.Fatalf("%v %s", err, out)
			}
		}
		id := fmt.Sprintf("rss-%d", i)
		prefix := fmt.Sprintf("10.%d.%d", 80+i/250, i%250)
		c := kernelConn(id, forwarder.PayloadEthernet, cPath, ePath, prefix)
		if err := d.Connect(ctx, c); err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		b.Cleanup(func() { _ = d.Disconnect(context.Background(), id) })
		if out, err := nstest.Exec(b, cName, "ping", "-c", "50", "-i", "0.002", "-s", "1400", "-q", "-W", "1", prefix+".2"); err != nil {
			b.Fatalf("connection %d: %v %s", i, err, out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	rss1 := vmRSSKiB(b, p.Pid())
	b.Logf("%d connections: VPP RSS %d -> %d KiB (buffers-per-numa %d)", n, rss0, rss1, processDefaults(ProcessOptions{Buffers: buffers}).Buffers)
	return float64(rss1-rss0) / float64(n)
}

// BenchmarkVPPScheduling measures what VPP's scheduling choices cost: the
// CPU an idle VPP takes with 5 connections up, and the ping round trip
// through it, by KERNEL mode, rx mode and poll sleep (docs/operations.md,
// "Scheduling"):
//
//	VPP_BIN=/opt/vpp/bin/vpp go test -run '^$' -bench VPPScheduling -benchtime 1x ./vppapi/
func BenchmarkVPPScheduling(b *testing.B) {
	bin := vppBinary(b)
	for _, c := range []struct {
		kmode, rx string
		sleep     int
	}{
		{ModeAFPacket, RxModeInterrupt, 0}, {ModeAFPacket, RxModeInterrupt, 100}, {ModeAFPacket, RxModePolling, 0},
		{ModeAFXDP, RxModeInterrupt, 0}, {ModeAFXDP, RxModePolling, 0}, {ModeAFXDP, RxModePolling, 100},
	} {
		b.Run(fmt.Sprintf("%s/rx=%s/sleep=%d", c.kmode, c.rx, c.sleep), func(b *testing.B) {
			for b.Loop() {
				cpu, rtt := vppIdle(b, bin, c.kmode, c.rx, c.sleep)
				b.ReportMetric(cpu, "idle-cpu-%")
				b.ReportMetric(rtt, "rtt-ms")
			}
		})
	}
}

var rttAvg = regexp.MustCompile(`rtt min/avg/max/mdev = [0-9.]+/([0-9.]+)/`)

func vppIdle(b *testing.B, bin, kmode, rx string, sleep int) (cpuPct, rttMs float64) {
	b.StopTimer()
	defer b.StartTimer()
	_, nodePath := nstest.New(b)
	p := startVPPWith(b, bin, nodePath, ProcessOptions{PollSleepUsec: &sleep})
	vc := dialVPP(b, p)
	d, err := New(context.Background(), Options{Name: "sched", Conn: vc, HostNetNS: nodePath, KernelMode: kmode, RxMode: rx})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = d.Close() })
	var client string
	for i := range 5 {
		cName, cPath := nstest.New(b)
		eName, ePath := nstest.New(b)
		for _, ns := range []string{cName, eName} {
			if out, err := nstest.Exec(b, ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
				b.Fatalf("%v %s", err, out)
			}
		}
		if i == 0 {
			client = cName
		}
		id := fmt.Sprintf("sched-%d", i)
		if err := d.Connect(context.Background(), kernelConn(id, forwarder.PayloadEthernet, cPath, ePath, fmt.Sprintf("10.81.%d", i))); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = d.Disconnect(context.Background(), id) })
	}
	if out, err := nstest.Exec(b, client, "ping", "-c", "3", "-i", "0.2", "-q", "10.81.0.2"); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	time.Sleep(time.Second)
	t0 := cpuTicks(b, p.Pid())
	time.Sleep(3 * time.Second)
	cpuPct = float64(cpuTicks(b, p.Pid())-t0) / 3 // USER_HZ is 100: ticks/s = percent
	out, err := nstest.Exec(b, client, "ping", "-c", "50", "-i", "0.05", "-q", "10.81.0.2")
	m := rttAvg.FindStringSubmatch(out)
	if err != nil || m == nil {
		b.Fatalf("ping: %v %s", err, out)
	}
	rttMs, _ = strconv.ParseFloat(m[1], 64)
	return cpuPct, rttMs
}

// cpuTicks is the user and system CPU time of pid in clock ticks.
func cpuTicks(b testing.TB, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(st)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	u, err1 := strconv.Atoi(f[11])
	sys, err2 := strconv.Atoi(f[12])
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return u + sys
}

func vmRSSKiB(b testing.TB, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(st), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
