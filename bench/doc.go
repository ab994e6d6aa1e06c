// Package bench is nsmfwd's benchmark harness: it builds client — forwarder —
// endpoint topologies in network namespaces it creates, drives traffic
// through them with iperf3 and a UDP ping-pong generator, measures the
// control plane through the real NSM gRPC API, and renders the results as
// JSON, Markdown, benchstat text and SVG plots.
//
// A dataplane row is a Topology; adding one (a VPP variant, say) means
// implementing that interface and listing it in Topologies.
package bench
