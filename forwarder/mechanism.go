package forwarder

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// NSM's KERNEL mechanism: its type string and the parameter keys nsmfwd reads
// (equal to the constants in github.com/networkservicemesh/api).
const (
	MechanismKernel = "KERNEL"
	// ParamNetNSURL names the network namespace: file:///proc/PID/ns/net,
	// file:///run/netns/NAME or inode://DEV/INO.
	ParamNetNSURL = "inodeURL"
	// ParamIfName is the interface name inside the namespace.
	ParamIfName = "name"
	// MaxIfNameLen is Linux's limit on an interface name (IFNAMSIZ-1).
	MaxIfNameLen = 15
)

// MechanismSpec describes a mechanism type the forwarder can be asked for.
type MechanismSpec struct {
	// Type is NSM's type string, e.g. "KERNEL".
	Type string
	// Cls is the class the mechanism belongs to (ClsLocal or ClsRemote).
	Cls string
	// Validate checks the parameters' syntax without touching the node.
	// field is the request path of the mechanism, used in error fields.
	Validate func(m Mechanism, field string) error
}

// Registry maps NSM mechanism type strings to their specs.
type Registry struct {
	mu    sync.RWMutex
	specs map[string]MechanismSpec
}

// NewRegistry returns a registry holding specs.
func NewRegistry(specs ...MechanismSpec) *Registry {
	r := &Registry{specs: make(map[string]MechanismSpec)}
	for _, s := range specs {
		r.specs[s.Type] = s
	}
	return r
}

// DefaultRegistry returns a registry with every mechanism nsmfwd knows.
func DefaultRegistry() *Registry {
	return NewRegistry(KernelMechanism(), VXLANMechanism(), VLANMechanism(), WireGuardMechanism())
}

// Register adds or replaces the spec for s.Type.
func (r *Registry) Register(s MechanismSpec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.specs[s.Type] = s
}

// Lookup returns the spec for typ.
func (r *Registry) Lookup(typ string) (MechanismSpec, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.specs[typ]
	return s, ok
}

// Validate checks m against its spec; an unknown type is CodeInvalidArgument.
func (r *Registry) Validate(m Mechanism, field string) error {
	s, ok := r.Lookup(m.Type)
	if !ok {
		return Errorf(CodeInvalidArgument, field+".type", "unknown mechanism type %q", m.Type)
	}
	if s.Cls != "" && m.Cls != "" && m.Cls != s.Cls {
		return Errorf(CodeInvalidArgument, field+".cls", "mechanism %s has class %q, want %q", m.Type, m.Cls, s.Cls)
	}
	if s.Validate == nil {
		return nil
	}
	return s.Validate(m, field)
}

// KernelMechanism is the spec of NSM's KERNEL mechanism.
func KernelMechanism() MechanismSpec {
	return MechanismSpec{Type: MechanismKernel, Cls: ClsLocal, Validate: validateKernel}
}

func validateKernel(m Mechanism, field string) error {
	pfield := field + ".parameters."
	raw, ok := m.Params[ParamNetNSURL]
	if !ok || raw == "" {
		return Errorf(CodeInvalidArgument, pfield+ParamNetNSURL, "missing network namespace URL")
	}
	if _, err := ParseNetNSURL(raw); err != nil {
		return &Error{Code: CodeInvalidArgument, Field: pfield + ParamNetNSURL, Err: err}
	}
	if name := m.Params[ParamIfName]; name != "" {
		if err := ValidateIfName(name); err != nil {
			return &Error{Code: CodeInvalidArgument, Field: pfield + ParamIfName, Err: err}
		}
	}
	return nil
}

// ValidateIfName checks a Linux interface name.
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty interface name")
	case len(name) > MaxIfNameLen:
		return fmt.Errorf("interface name %q is %d characters, the limit is %d", name, len(name), MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("invalid interface name %q", name)
	case strings.ContainsAny(name, "/: \t\n\x00"):
		return fmt.Errorf("interface name %q contains '/', ':', a space or a control character", name)
	}
	return nil
}

// NetNSRef names a network namespace either by path (file:// URL) or by the
// device and inode of its nsfs file (inode:// URL, as NSM's grpcfd sends).
type NetNSRef struct {
	Path string
	Dev  uint64
	Ino  uint64
}

// IsInode reports whether r names the namespace by device and inode.
func (r NetNSRef) IsInode() bool { return r.Path == "" }

func (r NetNSRef) String() string {
	if r.IsInode() {
		return fmt.Sprintf("inode://%d/%d", r.Dev, r.Ino)
	}
	return (&url.URL{Scheme: "file", Path: r.Path}).String()
}

// ParseNetNSURL parses NSM's inodeURL parameter.
func ParseNetNSURL(raw string) (NetNSRef, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return NetNSRef{}, fmt.Errorf("parse network namespace URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "file":
		p := u.Path
		if u.Host != "" && u.Host != "localhost" {
			return NetNSRef{}, fmt.Errorf("network namespace URL %q: file URL with host %q", raw, u.Host)
		}
		if !strings.HasPrefix(p, "/") {
			return NetNSRef{}, fmt.Errorf("network namespace URL %q: path must be absolute", raw)
		}
		return NetNSRef{Path: p}, nil
	case "inode":
		dev, err1 := strconv.ParseUint(u.Host, 10, 64)
		ino, err2 := strconv.ParseUint(strings.TrimPrefix(u.Path, "/"), 10, 64)
		if err1 != nil || err2 != nil || ino == 0 {
			return NetNSRef{}, fmt.Errorf("network namespace URL %q: want inode://DEV/INO with decimal numbers", raw)
		}
		return NetNSRef{Dev: dev, Ino: ino}, nil
	default:
		return NetNSRef{}, fmt.Errorf("network namespace URL %q: scheme %q is neither file nor inode", raw, u.Scheme)
	}
}
