package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/controlplane/nsmpath"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// connInfo is what nsmctl shows of a connection. Counters are the
// forwarder's, seen from the client: rx is what the client sent, tx what it
// was sent, drops both directions' drops.
type connInfo struct {
	ID             string            `json:"id"`
	ForwarderID    string            `json:"forwarder_id,omitempty"`
	NetworkService string            `json:"network_service"`
	Endpoint       string            `json:"endpoint,omitempty"`
	State          string            `json:"state"`
	NetNS          string            `json:"netns,omitempty"`
	IfName         string            `json:"ifname,omitempty"`
	ClientAddrs    []string          `json:"client_addrs"`
	EndpointAddrs  []string          `json:"endpoint_addrs"`
	Expires        time.Time         `json:"expires,omitzero"`
	Counters       map[string]uint64 `json:"counters,omitempty"`
}

func clientID(conn *networkservice.Connection) string {
	if segs := conn.GetPath().GetPathSegments(); len(segs) > 0 && segs[0].GetId() != "" {
		return segs[0].GetId()
	}
	return conn.GetId()
}

func newConnInfo(conn *networkservice.Connection, fwdName string) connInfo {
	segs := conn.GetPath().GetPathSegments()
	ci := connInfo{
		ID:             clientID(conn),
		NetworkService: conn.GetNetworkService(),
		Endpoint:       conn.GetNetworkServiceEndpointName(),
		State:          conn.GetState().String(),
		NetNS:          conn.GetMechanism().GetParameters()[forwarder.ParamNetNSURL],
		IfName:         conn.GetMechanism().GetParameters()[forwarder.ParamIfName],
		ClientAddrs:    nonNil(conn.GetContext().GetIpContext().GetSrcIpAddrs()),
		EndpointAddrs:  nonNil(conn.GetContext().GetIpContext().GetDstIpAddrs()),
	}
	if ci.Endpoint == "" && len(segs) > 1 {
		ci.Endpoint = segs[len(segs)-1].GetName()
	}
	if len(segs) > 0 && segs[0].GetExpires() != nil {
		ci.Expires = segs[0].GetExpires().AsTime().UTC()
	}
	if i := forwarderIndex(conn, fwdName); i >= 0 {
		ci.ForwarderID = segs[i].GetId()
		if c := nsc.Counters(conn, segs[i].GetName()); len(c) > 0 {
			ci.Counters = c
		}
	}
	return ci
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// rx, tx and drops as the table shows them.
func (ci connInfo) traffic() (rxPkts, rxBytes, txPkts, txBytes, drops string) {
	if ci.Counters == nil {
		return "-", "-", "-", "-", "-"
	}
	u := func(k string) string { return strconv.FormatUint(ci.Counters[k], 10) }
	return u(nsmpath.MetricClientRxPackets), u(nsmpath.MetricClientRxBytes),
		u(nsmpath.MetricClientTxPackets), u(nsmpath.MetricClientTxBytes),
		strconv.FormatUint(ci.Counters[nsmpath.MetricClientDrops]+ci.Counters[nsmpath.MetricServerDrops], 10)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func joinOrDash(s []string) string { return orDash(strings.Join(s, ",")) }

func expiresText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func printTable(w io.Writer, infos []connInfo) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tNETNS\tIFNAME\tCLIENT\tENDPOINT\tEXPIRES\tRX_PKTS\tRX_BYTES\tTX_PKTS\tTX_BYTES\tDROPS")
	for _, ci := range infos {
		rp, rb, tp, tb, d := ci.traffic()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ci.ID, orDash(ci.NetworkService), orDash(ci.NetNS),
			orDash(ci.IfName), joinOrDash(ci.ClientAddrs), joinOrDash(ci.EndpointAddrs), expiresText(ci.Expires), rp, rb, tp, tb, d)
	}
	_ = tw.Flush()
}

// line is the one-line text form used by monitor.
func (ci connInfo) line() string {
	rp, rb, tp, tb, d := ci.traffic()
	return fmt.Sprintf("%s service=%s state=%s netns=%s ifname=%s client=%s endpoint=%s expires=%s rx=%s/%sB tx=%s/%sB drops=%s",
		ci.ID, orDash(ci.NetworkService), ci.State, orDash(ci.NetNS), orDash(ci.IfName), joinOrDash(ci.ClientAddrs),
		joinOrDash(ci.EndpointAddrs), expiresText(ci.Expires), rp, rb, tp, tb, d)
}

// printConn prints a connection connect or refresh got back.
func printConn(e env, output string, conn *networkservice.Connection, fwdName string) error {
	ci := newConnInfo(conn, fwdName)
	if output == "json" {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ci)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", ci.ID)
	fmt.Fprintf(tw, "forwarder id:\t%s\n", orDash(ci.ForwarderID))
	fmt.Fprintf(tw, "service:\t%s\n", orDash(ci.NetworkService))
	fmt.Fprintf(tw, "netns:\t%s\n", orDash(ci.NetNS))
	fmt.Fprintf(tw, "ifname:\t%s\n", orDash(ci.IfName))
	fmt.Fprintf(tw, "client addrs:\t%s\n", joinOrDash(ci.ClientAddrs))
	fmt.Fprintf(tw, "endpoint addrs:\t%s\n", joinOrDash(ci.EndpointAddrs))
	fmt.Fprintf(tw, "expires:\t%s\n", expiresText(ci.Expires))
	return tw.Flush()
}
