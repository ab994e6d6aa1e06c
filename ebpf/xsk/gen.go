// Package xsk holds the XDP programs nsmfwd gives VPP's af_xdp plugin in
// place of its default one (VPP loads them from a file and fills their
// xsks_map itself):
//
//   - xskall, for a workload's veth end: every frame to VPP's AF_XDP
//     socket. With a program of nsmfwd's VPP also unloads it when the
//     interface is deleted; with VPP's default one (libxdp's dispatcher)
//     two programs stayed loaded per closed connection.
//   - xskpinhole, for the uplink: only UDP from a tunnel's far end to its
//     port (the pinholes map, which nsmfwd keeps in step with the live
//     tunnels) goes to VPP; everything else, ARP and neighbour discovery
//     included, stays with the host's stack, which shares the uplink.
package xsk

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" xskall xskall.c
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type pinhole_key xskpinhole xskpinhole.c
