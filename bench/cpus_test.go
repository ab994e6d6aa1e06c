package bench

import (
	"runtime"
	"slices"
	"testing"
)

func TestPlaceGenerators(t *testing.T) {
	for _, tc := range []struct {
		allowed        []int
		client, server int
	}{
		{nil, 0, 0},
		{[]int{3}, 3, 3},
		{[]int{0, 1}, 0, 1},
		{[]int{0, 1, 2, 3}, 0, 1},
		{[]int{2, 5, 7}, 2, 5}, // a cpuset without CPU 0 and 1
	} {
		c, s := PlaceGenerators(tc.allowed)
		if c != tc.client || s != tc.server {
			t.Errorf("PlaceGenerators(%v) = %d, %d; want %d, %d", tc.allowed, c, s, tc.client, tc.server)
		}
	}
}

func TestAllowedCPUs(t *testing.T) {
	cpus, err := AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	// runtime.NumCPU counts the same affinity mask, read at start-up.
	if len(cpus) != runtime.NumCPU() || !slices.IsSorted(cpus) {
		t.Fatalf("AllowedCPUs() = %v, NumCPU %d", cpus, runtime.NumCPU())
	}
}
