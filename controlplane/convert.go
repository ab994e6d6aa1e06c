package controlplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strings"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// toMechanism converts an NSM mechanism to the forwarder's model. Params is
// never nil, so a dataplane can fill in names.
func toMechanism(m *networkservice.Mechanism) forwarder.Mechanism {
	params := maps.Clone(m.GetParameters())
	if params == nil {
		params = map[string]string{}
	}
	return forwarder.Mechanism{Cls: m.GetCls(), Type: m.GetType(), Params: params}
}

// setParams copies params into m, adding keys the dataplane filled in
// (interface names) and keeping the others.
func setParams(m *networkservice.Mechanism, params map[string]string) {
	if m == nil || len(params) == 0 {
		return
	}
	if m.Parameters == nil {
		m.Parameters = make(map[string]string, len(params))
	}
	maps.Copy(m.Parameters, params)
}

const ipField = "connection.context.ip_context."

// ipSides splits the next hop's IP context into the client and endpoint
// sides of the vWire, the way NSM forwarders do: src_* belongs to the
// client's interface, dst_* to the endpoint's.
func ipSides(ipc *networkservice.IPContext) (client, endpoint forwarder.IPConfig, err error) {
	if client.Addrs, err = parsePrefixes(ipc.GetSrcIpAddrs(), ipField+"src_ip_addrs"); err != nil {
		return client, endpoint, err
	}
	if client.Routes, err = parseRoutes(ipc.GetSrcRoutes(), ipField+"src_routes"); err != nil {
		return client, endpoint, err
	}
	if client.Neighbors, err = parseNeighbors(ipc.GetIpNeighbors(), ipField+"ip_neighbors"); err != nil {
		return client, endpoint, err
	}
	if endpoint.Addrs, err = parsePrefixes(ipc.GetDstIpAddrs(), ipField+"dst_ip_addrs"); err != nil {
		return client, endpoint, err
	}
	if endpoint.Routes, err = parseRoutes(ipc.GetDstRoutes(), ipField+"dst_routes"); err != nil {
		return client, endpoint, err
	}
	return client, endpoint, nil
}

// parsePrefix accepts "addr/bits" and, as NSM endpoints sometimes send, a
// bare address meaning a host prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.ParsePrefix(s)
}

func parsePrefixes(in []string, field string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range in {
		p, err := parsePrefix(s)
		if err != nil {
			return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: fmt.Sprintf("%s[%d]", field, i), Err: err}
		}
		out = append(out, p)
	}
	return out, nil
}

func parseRoutes(in []*networkservice.Route, field string) ([]forwarder.Route, error) {
	var out []forwarder.Route
	for i, r := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		p, err := parsePrefix(r.GetPrefix())
		if err != nil {
			return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: f + ".prefix", Err: err}
		}
		rt := forwarder.Route{Prefix: p.Masked()}
		if r.GetNextHop() != "" {
			if rt.NextHop, err = netip.ParseAddr(r.GetNextHop()); err != nil {
				return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: f + ".nextHop", Err: err}
			}
		}
		out = append(out, rt)
	}
	return out, nil
}

func parseNeighbors(in []*networkservice.IpNeighbor, field string) ([]forwarder.Neighbor, error) {
	var out []forwarder.Neighbor
	for i, n := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		a, err := netip.ParseAddr(n.GetIp())
		if err != nil {
			return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: f + ".ip", Err: err}
		}
		if _, err := net.ParseMAC(n.GetHardwareAddress()); err != nil {
			return nil, &forwarder.Error{Code: forwarder.CodeInvalidArgument, Field: f + ".hardware_address", Err: err}
		}
		out = append(out, forwarder.Neighbor{IP: a, MAC: n.GetHardwareAddress()})
	}
	return out, nil
}

// toStatus turns err into the gRPC status the caller gets: a
// *forwarder.Error keeps its code, a status (from the next hop) passes
// through, a context error becomes Canceled/DeadlineExceeded, anything else
// is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if fe, ok := errors.AsType[*forwarder.Error](err); ok {
		return status.Error(codes.Code(fe.Code), err.Error())
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// nextHopError keeps the next hop's status code and prefixes its message.
func nextHopError(err error) error {
	st, _ := status.FromError(err)
	if st.Code() == codes.Unknown {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			st = status.FromContextError(err)
		}
	}
	return status.Error(st.Code(), "next hop: "+st.Message())
}

// MechanismLabels are the connection labels NSM uses to steer a client's
// mechanism, which the dataplanes read as mechanism parameters of the same
// name: sriovToken names the SR-IOV pool ("<serviceDomain>/<capability>")
// the client's VF comes from.
var MechanismLabels = []string{"sriovToken"}

// labelParams copies MechanismLabels from labels into the client's
// mechanism m where it has no such parameter of its own.
func labelParams(m *networkservice.Mechanism, labels map[string]string) {
	for _, k := range MechanismLabels {
		v, ok := labels[k]
		if !ok || v == "" || m.GetParameters()[k] != "" {
			continue
		}
		if m.Parameters == nil {
			m.Parameters = map[string]string{}
		}
		m.Parameters[k] = v
	}
}
