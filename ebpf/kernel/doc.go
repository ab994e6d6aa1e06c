// Package kernel is the kernel dataplane: each side of a vWire is a veth
// pair whose peer sits in the NSM client's or endpoint's network namespace,
// and an eBPF program on the ingress of the two host-side ends cross-connects
// them (see package xconnect). The datapath lives in the kernel: links carry
// aliases and BPF objects are pinned, so a restarted forwarder finds and
// adopts them, and traffic flows while no forwarder runs.
package kernel
