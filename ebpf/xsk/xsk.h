// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// What both of nsmfwd's AF_XDP programs share with VPP's af_xdp plugin.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// xsks_map holds VPP's AF_XDP socket of each rx queue; VPP fills it after
// loading the program (it looks the map up by this name).
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

// to_vpp hands the frame to VPP's socket of its rx queue, or to the
// kernel when there is none.
#define to_vpp(ctx) bpf_redirect_map(&xsks_map, (ctx)->rx_queue_index, XDP_PASS)
