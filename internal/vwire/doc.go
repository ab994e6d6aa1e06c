// Package vwire holds what the dataplanes that build veth-based vWires
// share: the names and link aliases derived from the forwarder name and the
// connection id (so a restarted forwarder finds its objects without
// state), the veth pair of one side with its peer created directly in the
// client's or endpoint's namespace, and the L3 settings (addresses,
// routes, neighbours) applied to it.
package vwire
