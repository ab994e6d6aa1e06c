//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// xconnect cross-connects two node-side devices: the host-side ends of two
// veth pairs, or a veth host end and a tunnel device (VXLAN, VLAN). It runs
// on the tc ingress of both: whatever the client sends arrives at the client
// host end's ingress and is redirected to the endpoint side, and vice
// versa. Toward a veth, bpf_redirect_peer makes the packet enter the target
// namespace's ingress directly, never touching host routing or bridging;
// toward a tunnel device, bpf_redirect sends it out through the device.
//
// A side may be a device without a link-layer header (WireGuard,
// ARPHRD_NONE), IP payload only: what it receives is a bare IP packet, which
// gets an Ethernet header before it goes to an Ethernet side; toward it,
// bpf_redirect itself drops the Ethernet header (the kernel does so for
// every device that has none).
//
// With endpoint_vlan set, the endpoint side is a VLAN on a trunk device that
// other connections share: toward it the program adds the 802.1Q tag; on
// the trunk's ingress it takes only frames of its VLAN for its client
// (unicast to the client's MAC, or a copy of broadcast and multicast) and
// passes everything else on to the next connection's program.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Set at load time; the verifier sees them as constants.
volatile const __u32 client_ifindex;   // host end of the client pair
volatile const __u32 endpoint_ifindex; // host end of the endpoint pair
volatile const __u8 peer_to_client;    // toward the client: 1 bpf_redirect_peer, 0 bpf_redirect
volatile const __u8 peer_to_endpoint;  // toward the endpoint: the same
volatile const __u8 ip_mode;           // 1: IP payload: rewrite MACs, drop non-IP
volatile const __u16 endpoint_vlan;    // 1-4094: the endpoint side is this VLAN on a shared trunk
volatile const __u8 client_l3;         // the client side's device has no link-layer header (IP mode)
volatile const __u8 endpoint_l3;       // the endpoint side's: the same
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

static __always_inline int mac_is_client(const __u8 *mac)
{
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		if (mac[i] != client_mac[i])
			return 0;
	return 1;
}

// vlan_filter returns TC_ACT_OK for a trunk frame this connection takes and
// TC_ACT_UNSPEC (next program) for any other.
static __always_inline int vlan_filter(struct __sk_buff *skb)
{
	if (!skb->vlan_present || (skb->vlan_tci & 0x0fff) != endpoint_vlan)
		return TC_ACT_UNSPEC;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_UNSPEC;
	if (!(eth->h_dest[0] & 1) && !mac_is_client(eth->h_dest))
		return TC_ACT_UNSPEC;
	return TC_ACT_OK;
}

SEC("tc")
int xconnect(struct __sk_buff *skb)
{
	__u32 dir, target;
	__u8 peer, from_l3, to_l3;
	volatile const __u8 *dst, *src;

	if (skb->ifindex == client_ifindex) {
		dir = 0;
		target = endpoint_ifindex;
		peer = peer_to_endpoint;
		from_l3 = client_l3;
		to_l3 = endpoint_l3;
		dst = endpoint_mac;
		src = client_mac;
	} else if (skb->ifindex == endpoint_ifindex) {
		if (endpoint_vlan) {
			int r = vlan_filter(skb);
			if (r != TC_ACT_OK)
				return r;
		}
		dir = 1;
		target = client_ifindex;
		peer = peer_to_client;
		from_l3 = endpoint_l3;
		to_l3 = client_l3;
		dst = client_mac;
		src = endpoint_mac;
	} else {
		return TC_ACT_OK;
	}

	struct counters *c = bpf_map_lookup_elem(&stats, &dir);

	if (ip_mode && from_l3) {
		// A bare IP packet: skb->protocol, which the device set, is all
		// there is to type it.
		__u32 proto = skb->protocol;

		if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
			return drop(c);
		if (!to_l3) {
			if (bpf_skb_change_head(skb, ETH_HLEN, 0))
				return drop(c);
			void *data = (void *)(long)skb->data;
			void *data_end = (void *)(long)skb->data_end;
			struct ethhdr *eth = data;

			if ((void *)(eth + 1) > data_end)
				return drop(c);
			eth->h_proto = (__be16)proto;
			set_macs(eth, dst, src);
		}
	} else if (ip_mode) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return drop(c);
		if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
			return drop(c);
		set_macs(eth, dst, src);
	}

	if (endpoint_vlan && dir == 0 && bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), endpoint_vlan))
		return drop(c);
	if (endpoint_vlan && dir == 1) {
		__u32 tci = skb->vlan_tci;
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > data_end)
			return drop(c);
		int group = eth->h_dest[0] & 1;

		if (bpf_skb_vlan_pop(skb))
			return drop(c);
		if (group) {
			// A copy for our client; the frame, tagged again, goes on
			// to the other connections of the VLAN.
			if (bpf_clone_redirect(skb, target, 0) == 0 && c) {
				c->packets++;
				c->bytes += skb->len;
			}
			bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), tci);
			return TC_ACT_UNSPEC;
		}
	}

	long ret;
	if (peer)
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
