package forwarder

import (
	"maps"
	"net/netip"
	"slices"
	"time"
)

// Payload is what a vWire carries, as NSM's payload constants name it.
type Payload string

// Payloads NSM defines.
const (
	PayloadEthernet Payload = "ETHERNET"
	PayloadIP       Payload = "IP"
)

// Mechanism classes, as in NSM's cls package.
const (
	ClsLocal  = "LOCAL"
	ClsRemote = "REMOTE"
)

// Mechanism is one side's attachment: NSM's mechanism type ("KERNEL",
// "MEMIF", ...), its class and its parameters, unchanged from the request.
type Mechanism struct {
	Cls    string            `json:"cls,omitempty"`
	Type   string            `json:"type"`
	Params map[string]string `json:"params,omitempty"`
}

// Param returns the parameter named key, or "".
func (m Mechanism) Param(key string) string { return m.Params[key] }

// Route is a route installed on one side of the vWire. A zero NextHop means
// the route goes straight out of the vWire interface.
type Route struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"next_hop,omitzero"`
}

// Neighbor is a static neighbour (ARP/NDP) entry on one side.
type Neighbor struct {
	IP  netip.Addr `json:"ip"`
	MAC string     `json:"mac"`
}

// IPConfig is the L3 configuration applied to one side's interface.
type IPConfig struct {
	Addrs     []netip.Prefix `json:"addrs,omitempty"`
	Routes    []Route        `json:"routes,omitempty"`
	Neighbors []Neighbor     `json:"neighbors,omitempty"`
}

// Side is one end of a vWire: how it attaches and how it is addressed.
type Side struct {
	Mechanism Mechanism `json:"mechanism"`
	IP        IPConfig  `json:"ip"`
}

// Conn is one vWire as a dataplane sees it. ID is the forwarder's own path
// segment id; every object a dataplane creates for the connection carries it
// so that a restarted forwarder can find it again.
type Conn struct {
	ID             string `json:"id"`
	NetworkService string `json:"network_service,omitempty"`
	// Labels are the connection's NSM labels; a VLAN side picks its host
	// device by the "via" label.
	Labels   map[string]string `json:"labels,omitempty"`
	Payload  Payload           `json:"payload"`
	MTU      uint32            `json:"mtu,omitempty"`
	Client   Side              `json:"client"`
	Endpoint Side              `json:"endpoint"`
	Expires  time.Time         `json:"expires"`
}

// Clone returns a deep copy of c.
func (c *Conn) Clone() *Conn {
	if c == nil {
		return nil
	}
	out := *c
	out.Labels = maps.Clone(c.Labels)
	out.Client = c.Client.clone()
	out.Endpoint = c.Endpoint.clone()
	return &out
}

func (s Side) clone() Side {
	out := s
	if s.Mechanism.Params != nil {
		out.Mechanism.Params = make(map[string]string, len(s.Mechanism.Params))
		for k, v := range s.Mechanism.Params {
			out.Mechanism.Params[k] = v
		}
	}
	out.IP.Addrs = slices.Clone(s.IP.Addrs)
	out.IP.Routes = slices.Clone(s.IP.Routes)
	out.IP.Neighbors = slices.Clone(s.IP.Neighbors)
	return out
}

// Counters are one direction's datapath counters.
type Counters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Drops   uint64 `json:"drops"`
}

// Stats are a connection's live counters, read from the datapath.
// ClientToEndpoint counts what the client sent toward the endpoint.
type Stats struct {
	ClientToEndpoint Counters `json:"client_to_endpoint"`
	EndpointToClient Counters `json:"endpoint_to_client"`
}
