package forwarder

import "context"

// Reasons a side of a connection is found dead, as Death.Reason and as the
// reason label of the reaped-connections metric.
const (
	ReasonClientNetNSGone       = "client_netns_gone"
	ReasonClientInterfaceGone   = "client_interface_gone"
	ReasonEndpointNetNSGone     = "endpoint_netns_gone"
	ReasonEndpointInterfaceGone = "endpoint_interface_gone"
)

// Death is a hint from a dataplane that one side of connection ID may have
// died (its interface disappeared, its namespace went away). Hints may be
// duplicated or stale; the receiver confirms with Watcher.Alive under the
// connection's lock before acting. An empty ID asks the receiver to check
// every connection (the dataplane may have missed events).
type Death struct {
	ID     string
	Side   SideKind
	Reason string
}

// Watcher is implemented by dataplanes that see a client or endpoint die
// before its token expires: the kernel tells them (netlink link events, a
// memif peer disconnecting, a VF back in the host namespace).
type Watcher interface {
	// Watch sends death hints on ch until ctx ends; it returns ctx's error
	// or why it could not watch. It never blocks the dataplane's own work:
	// when ch is full it coalesces into a check-everything hint.
	Watch(ctx context.Context, ch chan<- Death) error
	// Alive reports whether side of c still exists; when it does not,
	// reason says why (one of the Reason constants).
	Alive(ctx context.Context, c *Conn, side SideKind) (alive bool, reason string, err error)
	// DisconnectSide removes the objects of one side only (and the
	// cross-connect, which cannot work without it), leaving the other side
	// in place: after an endpoint died, the client keeps its interface
	// while NSM heals the connection toward another endpoint. A later
	// Connect rebuilds what is missing.
	DisconnectSide(ctx context.Context, id string, side SideKind) error
}
