package bench

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// AllowedCPUs returns the CPUs this process may run on, in ascending order.
// It reads the affinity mask rather than counting CPUs from 0, because a
// CI runner's container cpuset or a taskset around make can leave CPU 0 or
// 1 out, and taskset to a CPU outside the mask fails.
func AllowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	n := set.Count()
	cpus := make([]int, 0, n)
	for cpu := 0; len(cpus) < n; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	return cpus, nil
}

// PlaceGenerators returns the CPUs of the traffic client and server: the
// first two allowed CPUs, or the only one twice on a single-CPU machine.
// On a 2- or 4-core runner with every CPU allowed this is CPU 0 and CPU 1;
// the CPUs after those two are left to the forwarder (a VPP row can pin
// its main thread there).
func PlaceGenerators(allowed []int) (client, server int) {
	switch len(allowed) {
	case 0:
		return 0, 0
	case 1:
		return allowed[0], allowed[0]
	default:
		return allowed[0], allowed[1]
	}
}
