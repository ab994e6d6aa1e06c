package vppapi

import (
	"context"
	"fmt"
	"sync"

	"go.fd.io/govpp/adapter/statsclient"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/core"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Stats reads interface counters from VPP's stats segment.
type Stats struct {
	socket string
	mu     sync.Mutex
	conn   *core.StatsConnection
	buf    api.InterfaceStats
}

var _ StatsReader = (*Stats)(nil)

// NewStats returns a reader of the stats segment at socket; it connects
// on first use and again after an error (VPP restarted).
func NewStats(socket string) *Stats { return &Stats{socket: socket} }

// InterfaceCounters implements StatsReader: received counters, and drops,
// by sw_if_index.
func (s *Stats) InterfaceCounters(_ context.Context, idx ...uint32) (rx, drops map[uint32]forwarder.Counters, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		if s.conn, err = core.ConnectStats(statsclient.NewStatsClient(s.socket)); err != nil {
			s.conn = nil
			return nil, nil, fmt.Errorf("vpp stats %s: %w", s.socket, err)
		}
	}
	if err := s.conn.GetInterfaceStats(&s.buf); err != nil {
		s.conn.Disconnect()
		s.conn = nil
		return nil, nil, fmt.Errorf("vpp interface stats: %w", err)
	}
	rx, drops = map[uint32]forwarder.Counters{}, map[uint32]forwarder.Counters{}
	for _, i := range idx {
		if int(i) >= len(s.buf.Interfaces) {
			continue
		}
		ic := s.buf.Interfaces[i]
		rx[i] = forwarder.Counters{Packets: ic.Rx.Packets, Bytes: ic.Rx.Bytes}
		drops[i] = forwarder.Counters{Drops: ic.Drops + ic.RxErrors}
	}
	return rx, drops, nil
}

// Close disconnects from the stats segment.
func (s *Stats) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Disconnect()
		s.conn = nil
	}
}
