//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// xskall hands every frame of the interface to VPP's AF_XDP socket of its
// rx queue (VPP fills xsks_map), or to the kernel when there is none.

#include "xsk.h"

SEC("xdp")
int nsmfwd_xsk_all(struct xdp_md *ctx)
{
	return to_vpp(ctx);
}

char __license[] SEC("license") = "Dual MIT/GPL";
