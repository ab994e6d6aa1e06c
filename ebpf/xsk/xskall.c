//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// xskall hands every frame of the interface to VPP's AF_XDP socket of its
// rx queue (VPP fills xsks_map), or to the kernel when there is none.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

SEC("xdp")
int nsmfwd_xsk_all(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS);
}

char __license[] SEC("license") = "Dual MIT/GPL";
