package kernel

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/internal/vwire"
)

// groupBase marks the link groups the deleter uses (groups are otherwise
// rarely used on a node; 0 is the kernel's default). Below it, 16 bits are
// a random per-deleter salt and 8 bits a batch sequence: a group delete
// removes every link of the group in the namespace, so two forwarders
// sharing a namespace (a rolling restart, parallel tests) must not pick
// the same group at the same moment.
const groupBase = 0x6e000000

// deleter deletes node-side links in batches. Deleting a veth costs an RCU
// grace period under the kernel's RTNL lock (about 25 ms here), so
// deleting links one by one serialises mass teardowns (200 dead clients
// took 10 s). Deleting every link of a group is one RTNL section and one
// grace period. Group commit: callers tag their links with the open
// batch's group and wait; the batch is deleted as soon as the previous one
// is done, so a lone delete waits for nothing and concurrent ones share.
type deleter struct {
	h    *netlink.Handle
	sock *nl.NetlinkSocket

	mu      sync.Mutex
	group   uint32       // group of the open batch
	waiters []chan error // callers in the open batch
	running bool         // a batch is being deleted
	seq     uint32       // distinguishes successive groups
	salt    uint32       // 16 random bits: distinguishes deleters
}

func newDeleter(h *netlink.Handle, ns netns.NsHandle) (*deleter, error) {
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket for link deletion: %w", err)
	}
	var salt [2]byte
	if _, err := rand.Read(salt[:]); err != nil {
		sock.Close()
		return nil, fmt.Errorf("link group salt: %w", err)
	}
	d := &deleter{h: h, sock: sock, salt: uint32(binary.BigEndian.Uint16(salt[:]))}
	d.group = d.nextGroupLocked()
	return d, nil
}

func (d *deleter) close() {
	if d != nil && d.sock != nil {
		d.sock.Close()
	}
}

func (d *deleter) nextGroupLocked() uint32 {
	d.seq++
	return groupBase | d.salt<<8 | d.seq&0xff
}

// delete removes links (and their veth peers) and returns once they are
// gone. Links already gone are not an error.
func (d *deleter) delete(links ...netlink.Link) error {
	if len(links) == 0 {
		return nil
	}
	ch := make(chan error, 1)
	d.mu.Lock()
	var errs []error
	tagged := 0
	for _, l := range links {
		if err := d.h.LinkSetGroup(l, int(d.group)); err != nil {
			if !vwire.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete %s: set group: %w", l.Attrs().Name, err))
			}
			continue
		}
		tagged++
	}
	if tagged == 0 {
		d.mu.Unlock()
		return errors.Join(errs...)
	}
	d.waiters = append(d.waiters, ch)
	if !d.running {
		d.running = true
		go d.run()
	}
	d.mu.Unlock()
	errs = append(errs, <-ch)
	return errors.Join(errs...)
}

// run deletes batches until no caller waits.
func (d *deleter) run() {
	for {
		d.mu.Lock()
		if len(d.waiters) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		group, waiters := d.group, d.waiters
		d.group, d.waiters = d.nextGroupLocked(), nil
		d.mu.Unlock()

		err := d.deleteGroup(group)
		for _, w := range waiters {
			w <- err
		}
	}
}

func (d *deleter) deleteGroup(group uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: d.sock}}
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	if err != nil && !errors.Is(err, unix.ENODEV) { // ENODEV: every link already gone
		return fmt.Errorf("delete link group %#x: %w", group, err)
	}
	return nil
}
