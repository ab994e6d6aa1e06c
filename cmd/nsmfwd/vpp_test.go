package main

import (
	"strings"
	"testing"

	"github.com/nsmfwd/nsmfwd/vppapi"
)

func TestVPPSchedule(t *testing.T) {
	s, err := VPPConfig{}.schedule()
	if err != nil || s.PollSleepUsec != 0 || s.Nice != 0 || s.MainCore != -1 || s.RxMode != vppapi.RxModeInterrupt {
		t.Fatalf("default: %+v, %v", s, err)
	}
	if s, err = (VPPConfig{KernelMode: "af_xdp"}).schedule(); err != nil || s.RxMode != vppapi.RxModePolling || s.PollSleepUsec != vppapi.AFXDPPollSleepUsec {
		t.Fatalf("af_xdp sharing CPUs: %+v, %v", s, err)
	}
	if s, err = (VPPConfig{PollSleep: "100", Nice: "5", RxMode: "polling"}).schedule(); err != nil || s.PollSleepUsec != 100 || s.Nice != 5 || s.RxMode != vppapi.RxModePolling {
		t.Fatalf("overrides: %+v, %v", s, err)
	}
	for _, bad := range []VPPConfig{{CPUs: "x"}, {CPUs: "1023"}, {PollSleep: "soon"}, {Nice: "40"}, {RxMode: "adaptive"}} {
		if _, err := bad.schedule(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if _, err := (VPPConfig{CPUs: "x"}).schedule(); err == nil || !strings.Contains(err.Error(), "NSM_VPP_CPUS") {
		t.Errorf("error does not name NSM_VPP_CPUS: %v", err)
	}
}

func TestVPPRingsConfig(t *testing.T) {
	if err := (VPPConfig{RxBlock: 8192, TxFrames: 128, XDPQueue: 256, MemifRing: 256, MemifBuffer: 2048, TapRing: 256}).rings().Validate(); err != nil {
		t.Fatalf("the documented defaults: %v", err)
	}
	if err := (VPPConfig{RxBlock: 1000}).rings().Validate(); err == nil {
		t.Fatal("a block that is not whole pages accepted")
	}
}
