// Package xconnect loads and attaches the eBPF cross-connect of one vWire:
// a tc program on the ingress of both host-side veth ends that redirects
// each side's packets to the other.
package xconnect

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type counters xconnect xconnect.c
