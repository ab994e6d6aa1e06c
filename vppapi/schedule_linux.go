package vppapi

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Schedule is how a local VPP uses the node's CPUs.
type Schedule struct {
	// MainCore pins the main thread (-1: unpinned).
	MainCore int
	// Workers are the worker threads' CPUs.
	Workers []int
	// PollSleepUsec is the main loop's sleep between polls.
	PollSleepUsec int
	// Nice is VPP's nice value.
	Nice int
	// RxMode is the rx mode of the interfaces the dataplane creates
	// (RxModeInterrupt or RxModePolling).
	RxMode string
}

// AFXDPPollSleepUsec is the poll sleep of a VPP that shares the node's
// CPUs and polls AF_XDP queues.
const AFXDPPollSleepUsec = 100

// PlanSchedule chooses VPP's scheduling. With dedicated CPUs (the
// operator's, e.g. isolated ones) the first runs the main thread and the
// others a worker each, and interfaces are polled: lowest latency, the
// cores always busy. Without, VPP shares the node: the main thread does
// everything and must not hold a core. With af_packet (or tap) KERNEL
// sides every interface is put in interrupt mode, so VPP sleeps in epoll
// until a packet or an API message comes (a few percent of a core when
// idle); a poll sleep (VPP's poll-sleep-usec) is then not needed, and
// measured here it doubles the round trip through VPP. With AF_XDP KERNEL
// sides the interfaces are polled with a 100 µs poll sleep instead: polled
// AF_XDP queues are outside VPP's epoll, which VPP 25.10's main loop can
// livelock on once 16 of its sockets are readable together, for 8 % of a
// core when idle. pollSleep, nice and rxMode ("" for the choice), when
// given, override it.
func PlanSchedule(cpus []int, pollSleep, nice *int, rxMode, kernelMode string) (Schedule, error) {
	s := Schedule{MainCore: -1, RxMode: RxModeInterrupt}
	if kernelMode == ModeAFXDP {
		s.RxMode, s.PollSleepUsec = RxModePolling, AFXDPPollSleepUsec
	}
	if len(cpus) > 0 {
		allowed, err := allowedCPUs()
		if err != nil {
			return s, err
		}
		for _, c := range cpus {
			if !slices.Contains(allowed, c) {
				return s, fmt.Errorf("CPU %d is not one this process may run on (%v)", c, allowed)
			}
		}
		s = Schedule{MainCore: cpus[0], Workers: cpus[1:], RxMode: RxModePolling}
	}
	switch rxMode {
	case "":
	case RxModeInterrupt, RxModePolling:
		s.RxMode = rxMode
	default:
		return s, fmt.Errorf("rx mode %q: want %s or %s", rxMode, RxModeInterrupt, RxModePolling)
	}
	if pollSleep != nil {
		if *pollSleep < 0 || *pollSleep > 100000 {
			return s, fmt.Errorf("poll sleep %d µs: want 0 to 100000", *pollSleep)
		}
		s.PollSleepUsec = *pollSleep
	}
	if nice != nil {
		if *nice < -20 || *nice > 19 {
			return s, fmt.Errorf("nice %d: want -20 to 19", *nice)
		}
		s.Nice = *nice
	}
	return s, nil
}

func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("CPU affinity: %w", err)
	}
	var out []int
	for c := range 1024 {
		if set.IsSet(c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// ParseCPUList parses a Linux CPU list such as "2-3,6" into distinct CPUs
// in the order given.
func ParseCPUList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		a, err := strconv.Atoi(lo)
		b := a
		if err == nil && isRange {
			b, err = strconv.Atoi(hi)
		}
		if err != nil || a < 0 || b < a || b > 1023 {
			return nil, fmt.Errorf("CPU list %q: bad element %q", s, f)
		}
		for c := a; c <= b; c++ {
			if slices.Contains(out, c) {
				return nil, fmt.Errorf("CPU list %q: CPU %d twice", s, c)
			}
			out = append(out, c)
		}
	}
	return out, nil
}
