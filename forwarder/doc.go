// Package forwarder is nsmfwd's core: the connection model, the Dataplane
// interface every dataplane implements, the registry of mechanisms keyed by
// NSM's type strings, typed errors and the persisted connection table.
//
// It imports no NSM, govpp, eBPF, sriovnet or netlink package: the control
// plane translates NSM protobufs into these types, and each dataplane turns
// them into kernel or VPP objects.
package forwarder
