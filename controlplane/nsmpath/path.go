// Package nsmpath implements NSM's path-segment rules, shared by the
// forwarder's server, the endpoint companion and the client library.
package nsmpath

import (
	"fmt"
	"strconv"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Update finds or takes the path segment of the hop called name, the way
// NSM's sdk v1.18.0 (updatepath) does:
//
//   - an empty path gets one segment, ours, with the connection's id (or
//     newID when it has none);
//   - if the segment at Path.Index is ours, it is used as is;
//   - if the segment after Path.Index is ours (a refresh), Index moves to it;
//   - if the segment after Path.Index belongs to another hop (the path was
//     routed elsewhere before, e.g. a heal through another forwarder), it
//     becomes ours with id newID and the segments after it stay;
//   - otherwise our segment, with id newID, is appended.
//
// It returns the caller's index, to be restored on the way back, and leaves
// Path.Index on our segment. conn.Id is set to our segment's id.
func Update(conn *networkservice.Connection, name, newID string) (prevIndex uint32, err error) {
	if conn.GetPath() == nil {
		conn.Path = &networkservice.Path{}
	}
	path := conn.GetPath()
	if len(path.GetPathSegments()) == 0 {
		id := conn.GetId()
		if id == "" {
			id = newID
		}
		path.PathSegments = []*networkservice.PathSegment{{Name: name, Id: id}}
		path.Index = 0
		conn.Id = id
		return 0, nil
	}
	if int(path.GetIndex()) >= len(path.GetPathSegments()) {
		return 0, fmt.Errorf("path.index %d is out of range for %d path segments", path.GetIndex(), len(path.GetPathSegments()))
	}
	idx := path.GetIndex()
	switch {
	case path.GetPathSegments()[idx].GetName() == name:
		prevIndex = idx
	case int(idx+1) < len(path.GetPathSegments()) && path.GetPathSegments()[idx+1].GetName() == name:
		prevIndex = idx
		path.Index = idx + 1
	case int(idx+1) < len(path.GetPathSegments()):
		// Another hop's segment: it becomes ours, with a new id.
		path.PathSegments[idx+1] = &networkservice.PathSegment{Name: name, Id: newID}
		path.Index = idx + 1
		prevIndex = idx
	default:
		path.PathSegments = append(path.PathSegments, &networkservice.PathSegment{Name: name, Id: newID})
		path.Index = idx + 1
		prevIndex = idx
	}
	seg := path.GetPathSegments()[path.GetIndex()]
	if seg.GetId() == "" {
		seg.Id = newID
	}
	conn.Id = seg.GetId()
	return prevIndex, nil
}

// Find returns our segment's id without changing conn: the segment at
// Path.Index or the one after it when its name is name.
func Find(conn *networkservice.Connection, name string) (string, bool) {
	path := conn.GetPath()
	segs := path.GetPathSegments()
	idx := int(path.GetIndex())
	for _, i := range []int{idx, idx + 1} {
		if i >= 0 && i < len(segs) && segs[i].GetName() == name && segs[i].GetId() != "" {
			return segs[i].GetId(), true
		}
	}
	return "", false
}

// Restore puts conn back in its caller's frame: Path.Index = prevIndex and
// conn.Id = that segment's id.
func Restore(conn *networkservice.Connection, prevIndex uint32) {
	if conn.GetPath() == nil || int(prevIndex) >= len(conn.GetPath().GetPathSegments()) {
		return
	}
	conn.Path.Index = prevIndex
	conn.Id = conn.GetPath().GetPathSegments()[prevIndex].GetId()
}

// Keys of the counters a forwarder reports in its path segment's Metrics, as
// NSM's forwarders do. "client" is the vWire end toward the NSC, "server"
// the end toward the next hop; rx is what the forwarder received on that end.
const (
	MetricClientRxPackets = "client_rx_packets"
	MetricClientRxBytes   = "client_rx_bytes"
	MetricClientTxPackets = "client_tx_packets"
	MetricClientTxBytes   = "client_tx_bytes"
	MetricClientDrops     = "client_drops"
	MetricServerRxPackets = "server_rx_packets"
	MetricServerRxBytes   = "server_rx_bytes"
	MetricServerTxPackets = "server_tx_packets"
	MetricServerTxBytes   = "server_tx_bytes"
	MetricServerDrops     = "server_drops"
)

// Metrics renders s as path segment metrics.
func Metrics(s forwarder.Stats) map[string]string {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	c2e, e2c := s.ClientToEndpoint, s.EndpointToClient
	return map[string]string{
		MetricClientRxPackets: u(c2e.Packets),
		MetricClientRxBytes:   u(c2e.Bytes),
		MetricClientDrops:     u(c2e.Drops),
		MetricServerTxPackets: u(c2e.Packets),
		MetricServerTxBytes:   u(c2e.Bytes),
		MetricServerRxPackets: u(e2c.Packets),
		MetricServerRxBytes:   u(e2c.Bytes),
		MetricServerDrops:     u(e2c.Drops),
		MetricClientTxPackets: u(e2c.Packets),
		MetricClientTxBytes:   u(e2c.Bytes),
	}
}
