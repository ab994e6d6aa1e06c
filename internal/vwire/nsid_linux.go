package vwire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// EnsureNSID gives the namespace ns an id (nsid) in the namespace of h,
// unless it has one, and returns it. A namespace with an id there raises
// RTM_DELNSID there when it dies, which WatchNetNSDeaths hears: the one
// kernel event for the death of a namespace that holds none of the node's
// links (a VPP tap lives only in the workload's namespace).
func EnsureNSID(h *netlink.Handle, ns netns.NsHandle) (int, error) {
	if id, err := h.GetNetNsIdByFd(int(ns)); err == nil && id >= 0 {
		return id, nil
	}
	// -1 asks the kernel to pick a free id; EEXIST means another caller
	// gave it one meanwhile.
	if err := h.SetNetNsIdByFd(int(ns), -1); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("assign nsid: %w", err)
	}
	id, err := h.GetNetNsIdByFd(int(ns))
	if err != nil {
		return -1, fmt.Errorf("read nsid: %w", err)
	}
	return id, nil
}

// WatchNetNSDeaths sends a check-everything hint on ch whenever a
// namespace with an id in ns (see EnsureNSID) dies, until ctx ends. The
// zero ns means the process's own namespace. A socket error is logged,
// answered with a check-everything hint, and the watch subscribes again.
func WatchNetNSDeaths(ctx context.Context, ns netns.NsHandle, log *slog.Logger, ch chan<- forwarder.Death) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for {
		err := watchNSIDOnce(ctx, ns, ch)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.WarnContext(ctx, "namespace death watch interrupted; checking every connection", "error", err)
		TrySend(ch, forwarder.Death{})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(resubscribeDelay):
		}
	}
}

func watchNSIDOnce(ctx context.Context, ns netns.NsHandle, ch chan<- forwarder.Death) error {
	var s *nl.NetlinkSocket
	var err error
	if ns.IsOpen() && ns != 0 {
		s, err = nl.SubscribeAt(ns, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_NSID)
	} else {
		s, err = nl.Subscribe(unix.NETLINK_ROUTE, unix.RTNLGRP_NSID)
	}
	if err != nil {
		return fmt.Errorf("subscribe to nsid events: %w", err)
	}
	stop := context.AfterFunc(ctx, s.Close)
	defer func() {
		if stop() {
			s.Close()
		}
	}()
	for {
		msgs, _, err := s.Receive()
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.RTM_DELNSID {
				TrySend(ch, forwarder.Death{})
			}
		}
	}
}
