package vppapi

import (
	"slices"
	"strings"
	"testing"
)

func TestParseCPUList(t *testing.T) {
	got, err := ParseCPUList("2-4, 7,0")
	if err != nil || !slices.Equal(got, []int{2, 3, 4, 7, 0}) {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"a", "3-1", "1,1", "-2", "2048"} {
		if _, err := ParseCPUList(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPlanSchedule(t *testing.T) {
	s, err := PlanSchedule(nil, nil, nil, "", ModeAFPacket)
	if err != nil || s.MainCore != -1 || len(s.Workers) != 0 || s.PollSleepUsec != 0 || s.Nice != 0 || s.RxMode != RxModeInterrupt {
		t.Fatalf("shared default %+v, %v", s, err)
	}
	allowed, err := allowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	s, err = PlanSchedule(allowed, nil, nil, "", ModeAFPacket)
	if err != nil || s.MainCore != allowed[0] || !slices.Equal(s.Workers, allowed[1:]) || s.PollSleepUsec != 0 || s.Nice != 0 || s.RxMode != RxModePolling {
		t.Fatalf("dedicated %v: %+v, %v", allowed, s, err)
	}
	// AF_XDP sides on shared CPUs: polled (out of VPP's epoll, so of the
	// livelock) with a poll sleep; dedicated CPUs poll without one.
	if s, err = PlanSchedule(nil, nil, nil, "", ModeAFXDP); err != nil || s.RxMode != RxModePolling || s.PollSleepUsec != AFXDPPollSleepUsec {
		t.Fatalf("shared AF_XDP: %+v, %v", s, err)
	}
	if s, err = PlanSchedule(allowed, nil, nil, "", ModeAFXDP); err != nil || s.RxMode != RxModePolling || s.PollSleepUsec != 0 {
		t.Fatalf("dedicated AF_XDP: %+v, %v", s, err)
	}
	hundred, ten := 100, 10
	if s, err = PlanSchedule(nil, &hundred, &ten, RxModePolling, ModeAFPacket); err != nil || s.PollSleepUsec != 100 || s.Nice != 10 || s.RxMode != RxModePolling {
		t.Fatalf("overrides: %+v, %v", s, err)
	}
	if _, err := PlanSchedule(nil, nil, nil, "adaptive", ModeAFPacket); err == nil {
		t.Fatal("an unknown rx mode accepted")
	}
	if _, err := PlanSchedule([]int{1023}, nil, nil, "", ModeAFPacket); err == nil || !strings.Contains(err.Error(), "1023") {
		t.Fatalf("a CPU outside the affinity: %v", err)
	}
	bad := -1
	if _, err := PlanSchedule(nil, &bad, nil, "", ModeAFPacket); err == nil {
		t.Fatal("negative poll sleep accepted")
	}
}

func TestStartupConfSchedule(t *testing.T) {
	five := 5
	conf, err := StartupConf(ProcessOptions{RuntimeDir: "/r", MainCore: 1, Workers: []int{2, 3}, PollSleepUsec: &five})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"main-core 1", "corelist-workers 2,3", "poll-sleep-usec 5"} {
		if !strings.Contains(conf, want) {
			t.Errorf("startup.conf lacks %q:\n%s", want, conf)
		}
	}
	conf, _ = StartupConf(ProcessOptions{RuntimeDir: "/r", MainCore: -1})
	if strings.Contains(conf, "cpu {") {
		t.Errorf("shared VPP got a cpu section:\n%s", conf)
	}
}
