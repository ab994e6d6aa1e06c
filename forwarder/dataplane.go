package forwarder

import (
	"context"
	"sync"
)

// SideKind names one end of a vWire.
type SideKind string

// The two ends of a vWire.
const (
	SideClient   SideKind = "client"
	SideEndpoint SideKind = "endpoint"
)

// Dataplane builds vWires. Implementations are declarative and idempotent:
//
//   - Connect with a connection that already exists is a refresh: it creates
//     nothing new and brings the existing objects to the wanted state
//     (addresses, routes, MTU) in place.
//   - Disconnect of an unknown connection is not an error.
//   - Reconcile takes the full wanted set, adopts what already exists,
//     rebuilds what is missing and removes every object the dataplane owns
//     that is not wanted (after a restart: expired connections and orphans).
//
// A failed Connect leaves nothing behind that was not there before it.
// Errors are *Error values (see Errorf) where the caller's input is at fault,
// so the control plane can answer with the right gRPC code.
type Dataplane interface {
	// Name is a short identifier ("kernel", "vpp", "sriov") for logs and metrics.
	Name() string
	// Mechanisms lists the mechanism types the dataplane builds on each side,
	// in preference order.
	Mechanisms(side SideKind) []string
	// Check validates one side's mechanism against the node (namespace
	// exists, interface name free, ...) before the next hop is asked. It
	// creates nothing. id is the connection id: a name held by the same
	// connection (a refresh) is not a conflict.
	Check(ctx context.Context, id string, side SideKind, m Mechanism) error
	// Connect creates or refreshes the vWire of c.
	Connect(ctx context.Context, c *Conn) error
	// Disconnect removes every object of connection id.
	Disconnect(ctx context.Context, id string) error
	// Reconcile makes the node hold exactly the wanted connections.
	Reconcile(ctx context.Context, wanted []*Conn) (ReconcileResult, error)
	// Stats reads the live counters of connection id. An unknown id is
	// an *Error with CodeNotFound.
	Stats(ctx context.Context, id string) (Stats, error)
	// Ready reports whether the dataplane can build vWires now, or why not.
	Ready(ctx context.Context) error
	// Close releases the dataplane's own resources (handles, sockets). It
	// leaves established vWires in place: the datapath outlives the process.
	Close() error
}

// ReconcileResult tells what Reconcile did, by connection id.
type ReconcileResult struct {
	// Adopted connections were found intact and left as they were.
	Adopted []string
	// Rebuilt connections were missing objects that Reconcile recreated.
	Rebuilt []string
	// Removed lists owned objects that were not wanted (ids, or object
	// names when no id could be read).
	Removed []string
	// Failed connections could not be adopted or rebuilt (their namespace
	// is gone, say); their objects are removed and the caller should drop them.
	Failed map[string]error
}

// AdoptEach runs adopt for every wanted connection, workers at a time,
// and records each outcome in res: Failed when adopt fails, Rebuilt when
// it had to create something, Adopted otherwise. Dataplanes' Reconcile
// uses it for the wanted half of their work.
func AdoptEach(res *ReconcileResult, wanted []*Conn, workers int, adopt func(c *Conn) (changed bool, err error)) {
	if res.Failed == nil {
		res.Failed = map[string]error{}
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, max(workers, 1))
	)
	for _, c := range wanted {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			changed, err := adopt(c)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				res.Failed[c.ID] = err
			case changed:
				res.Rebuilt = append(res.Rebuilt, c.ID)
			default:
				res.Adopted = append(res.Adopted, c.ID)
			}
		})
	}
	wg.Wait()
}
