//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// xconnect cross-connects the host-side ends of two veth pairs. It runs on
// the tc ingress of both host ends: whatever the client sends arrives at the
// client host end's ingress and is redirected to the endpoint side, and vice
// versa. With bpf_redirect_peer the packet enters the target namespace's
// ingress directly and never touches host routing or bridging.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Set at load time; the verifier sees them as constants.
volatile const __u32 client_ifindex;   // host end of the client pair
volatile const __u32 endpoint_ifindex; // host end of the endpoint pair
volatile const __u8 redirect_peer;     // 1: bpf_redirect_peer, 0: bpf_redirect
volatile const __u8 ip_mode;           // 1: IP payload: rewrite MACs, drop non-IP
volatile const __u8 client_mac[ETH_ALEN];   // MAC of the client's in-namespace interface
volatile const __u8 endpoint_mac[ETH_ALEN]; // MAC of the endpoint's in-namespace interface

struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 drops;
};

// Entry 0: client to endpoint, entry 1: endpoint to client.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct counters);
} stats SEC(".maps");

static __always_inline int drop(struct counters *c)
{
	if (c)
		c->drops++;
	return TC_ACT_SHOT;
}

static __always_inline void set_macs(struct ethhdr *eth, volatile const __u8 *dst,
				     volatile const __u8 *src)
{
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = dst[i];
		eth->h_source[i] = src[i];
	}
}

SEC("tc")
int xconnect(struct __sk_buff *skb)
{
	__u32 dir, target;
	volatile const __u8 *dst, *src;

	if (skb->ifindex == client_ifindex) {
		dir = 0;
		target = endpoint_ifindex;
		dst = endpoint_mac;
		src = client_mac;
	} else if (skb->ifindex == endpoint_ifindex) {
		dir = 1;
		target = client_ifindex;
		dst = client_mac;
		src = endpoint_mac;
	} else {
		return TC_ACT_OK;
	}

	struct counters *c = bpf_map_lookup_elem(&stats, &dir);

	if (ip_mode) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return drop(c);
		if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
			return drop(c);
		set_macs(eth, dst, src);
	}

	long ret;
	if (redirect_peer)
		ret = bpf_redirect_peer(target, 0);
	else
		ret = bpf_redirect(target, 0);
	if (ret != TC_ACT_REDIRECT)
		return drop(c);
	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	return ret;
}

char __license[] SEC("license") = "Dual MIT/GPL";
