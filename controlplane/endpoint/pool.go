package endpoint

import (
	"fmt"
	"net/netip"
)

// pool hands out host addresses of one prefix. It is not safe for
// concurrent use; the Endpoint's mutex guards it.
type pool struct {
	prefix      netip.Prefix
	first, last netip.Addr
	used        map[netip.Addr]struct{}
}

// newPool returns a pool over p. Like a kernel subnet, an IPv4 prefix
// shorter than /31 gives neither its network nor its broadcast address, and
// an IPv6 prefix shorter than /127 not its subnet-router anycast (all-zero)
// address; /31, /32, /127 and /128 give every address.
func newPool(p netip.Prefix) (*pool, error) {
	if !p.IsValid() {
		return nil, fmt.Errorf("invalid prefix %v", p)
	}
	p = p.Masked()
	first := p.Addr()
	last := lastAddr(p)
	bits := p.Addr().BitLen()
	if p.Bits() < bits-1 {
		first = first.Next()
		if p.Addr().Is4() {
			last = last.Prev()
		}
	}
	return &pool{prefix: p, first: first, last: last, used: make(map[netip.Addr]struct{})}, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// contains reports whether a is one of the pool's host addresses.
func (p *pool) contains(a netip.Addr) bool {
	return p.prefix.Contains(a) && p.first.Compare(a) <= 0 && a.Compare(p.last) <= 0
}

func (p *pool) free(a netip.Addr) bool {
	_, used := p.used[a]
	return p.contains(a) && !used
}

// take marks a as used; the caller has checked free(a).
func (p *pool) take(a netip.Addr) { p.used[a] = struct{}{} }

func (p *pool) release(a netip.Addr) { delete(p.used, a) }

// pair allocates two free addresses, lowest first: the endpoint's (dst) and
// the client's (src).
func (p *pool) pair() (dst, src netip.Addr, ok bool) {
	for a := p.first; a.IsValid() && a.Compare(p.last) <= 0; a = a.Next() {
		if _, used := p.used[a]; used {
			continue
		}
		if !dst.IsValid() {
			dst = a
			continue
		}
		src = a
		p.take(dst)
		p.take(src)
		return dst, src, true
	}
	return netip.Addr{}, netip.Addr{}, false
}

// hostPrefix returns a as a single-host prefix (/32 or /128).
func hostPrefix(a netip.Addr) netip.Prefix {
	return netip.PrefixFrom(a, a.BitLen())
}
