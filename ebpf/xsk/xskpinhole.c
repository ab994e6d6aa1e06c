//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// xskpinhole shares an uplink between the host's stack and VPP: a UDP
// datagram whose source address and destination port are in pinholes (the
// far end and local port of a live tunnel) goes to VPP's AF_XDP socket of
// its rx queue; every other frame, ARP and neighbour discovery included,
// goes on to the host's stack.

#include "xsk.h"
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

// pinhole_key is a tunnel's far end (IPv4 as ::ffff:a.b.c.d) and the
// local UDP port it sends to.
struct pinhole_key {
	__u8 addr[16];
	__u16 port; // host byte order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pinhole_key);
	__type(value, __u8);
} pinholes SEC(".maps");

SEC("xdp")
int nsmfwd_xsk_pinhole(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct pinhole_key key = {};
	struct udphdr *udp;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
			return XDP_PASS;
		// Not a later fragment: those carry no UDP header.
		if (ip->frag_off & bpf_htons(0x1fff))
			return XDP_PASS;
		udp = (void *)ip + ip->ihl * 4;
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], &ip->saddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_UDP)
			return XDP_PASS;
		udp = (void *)(ip6 + 1);
		__builtin_memcpy(key.addr, &ip6->saddr, 16);
	} else {
		return XDP_PASS;
	}
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	key.port = bpf_ntohs(udp->dest);
	if (!bpf_map_lookup_elem(&pinholes, &key))
		return XDP_PASS;
	return to_vpp(ctx);
}

char __license[] SEC("license") = "Dual MIT/GPL";
