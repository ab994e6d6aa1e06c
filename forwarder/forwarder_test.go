package forwarder

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseNetNSURL(t *testing.T) {
	tests := []struct {
		in      string
		want    NetNSRef
		wantErr string
	}{
		{"file:///proc/42/ns/net", NetNSRef{Path: "/proc/42/ns/net"}, ""},
		{"file:///run/netns/blue", NetNSRef{Path: "/run/netns/blue"}, ""},
		{"inode://4/4026532001", NetNSRef{Dev: 4, Ino: 4026532001}, ""},
		{"inode://x/1", NetNSRef{}, "decimal"},
		{"inode://4/0", NetNSRef{}, "decimal"},
		{"file://host/etc/x", NetNSRef{}, "host"},
		{"http://a/b", NetNSRef{}, "neither file nor inode"},
		{"/run/netns/blue", NetNSRef{}, "neither file nor inode"},
	}
	for _, tt := range tests {
		got, err := ParseNetNSURL(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseNetNSURL(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseNetNSURL(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if back, _ := ParseNetNSURL(got.String()); back != got {
			t.Errorf("round trip of %q: %+v", tt.in, back)
		}
	}
}

func TestValidateIfName(t *testing.T) {
	for _, ok := range []string{"nsm0", "eth-1.100", "a23456789012345"} {
		if err := ValidateIfName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a234567890123456", ".", "..", "a/b", "a b", "a:b"} {
		if err := ValidateIfName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRegistryValidate(t *testing.T) {
	r := DefaultRegistry()
	field := "connection.mechanism"
	tests := []struct {
		name  string
		m     Mechanism
		code  Code
		field string
	}{
		{"ok", Mechanism{Cls: ClsLocal, Type: MechanismKernel, Params: map[string]string{ParamNetNSURL: "file:///run/netns/x", ParamIfName: "nsm0"}}, 0, ""},
		{"ok without name", Mechanism{Type: MechanismKernel, Params: map[string]string{ParamNetNSURL: "inode://4/5"}}, 0, ""},
		{"unknown type", Mechanism{Type: "CARRIER_PIGEON"}, CodeInvalidArgument, field + ".type"},
		{"wrong class", Mechanism{Cls: ClsRemote, Type: MechanismKernel}, CodeInvalidArgument, field + ".cls"},
		{"no netns", Mechanism{Type: MechanismKernel, Params: map[string]string{ParamIfName: "nsm0"}}, CodeInvalidArgument, field + ".parameters.inodeURL"},
		{"bad netns", Mechanism{Type: MechanismKernel, Params: map[string]string{ParamNetNSURL: "ftp://x"}}, CodeInvalidArgument, field + ".parameters.inodeURL"},
		{"long name", Mechanism{Type: MechanismKernel, Params: map[string]string{ParamNetNSURL: "inode://4/5", ParamIfName: "0123456789abcdef"}}, CodeInvalidArgument, field + ".parameters.name"},
		{"vxlan offer", Mechanism{Cls: ClsRemote, Type: MechanismVXLAN, Params: map[string]string{ParamSrcIP: "192.0.2.1", ParamSrcPort: "4789"}}, 0, ""},
		{"vxlan answer", Mechanism{Cls: ClsRemote, Type: MechanismVXLAN, Params: map[string]string{ParamSrcIP: "192.0.2.1", ParamDstIP: "2001:db8::2", ParamVNI: "16777215", ParamMTU: "1450"}}, 0, ""},
		{"vxlan local class", Mechanism{Cls: ClsLocal, Type: MechanismVXLAN}, CodeInvalidArgument, field + ".cls"},
		{"vxlan bad ip", Mechanism{Type: MechanismVXLAN, Params: map[string]string{ParamSrcIP: "192.0.2.300"}}, CodeInvalidArgument, field + ".parameters.src_ip"},
		{"vxlan vni 0", Mechanism{Type: MechanismVXLAN, Params: map[string]string{ParamVNI: "0"}}, CodeInvalidArgument, field + ".parameters.vni"},
		{"vxlan vni 2^24", Mechanism{Type: MechanismVXLAN, Params: map[string]string{ParamVNI: "16777216"}}, CodeInvalidArgument, field + ".parameters.vni"},
		{"vxlan port 0", Mechanism{Type: MechanismVXLAN, Params: map[string]string{ParamDstPort: "0"}}, CodeInvalidArgument, field + ".parameters.dst_port"},
		{"wireguard offer", Mechanism{Cls: ClsRemote, Type: MechanismWireGuard, Params: map[string]string{ParamSrcIP: "192.0.2.1", ParamSrcPort: "51820", ParamSrcPublicKey: "f1TYAeVgCtsxFyEat4Sxo8L4ktuUXMeMNV2w3psJAW0="}}, 0, ""},
		{"wireguard bad key", Mechanism{Type: MechanismWireGuard, Params: map[string]string{ParamDstPublicKey: "c2hvcnQ="}}, CodeInvalidArgument, field + ".parameters.dst_public_key"},
		{"wireguard bad ip", Mechanism{Type: MechanismWireGuard, Params: map[string]string{ParamDstIP: "x"}}, CodeInvalidArgument, field + ".parameters.dst_ip"},
		{"vlan ok", Mechanism{Type: MechanismVLAN, Params: map[string]string{ParamVLANID: "100"}}, 0, ""},
		{"vlan 4095", Mechanism{Type: MechanismVLAN, Params: map[string]string{ParamVLANID: "4095"}}, CodeInvalidArgument, field + ".parameters.vlan-id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Validate(tt.m, field)
			if tt.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var fe *Error
			if !errors.As(err, &fe) || fe.Code != tt.code || fe.Field != tt.field {
				t.Fatalf("got %v (%#v), want code %v field %q", err, fe, tt.code, tt.field)
			}
			if !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Fatalf("message %q does not start with the field", err)
			}
		})
	}
}

func TestCodeOfWrapped(t *testing.T) {
	base := Errorf(CodeNotFound, "f", "no such namespace")
	if got := CodeOf(fmt.Errorf("connect: %w", base)); got != CodeNotFound {
		t.Fatalf("CodeOf = %v", got)
	}
	if got := CodeOf(errors.New("plain")); got != CodeUnknown {
		t.Fatalf("CodeOf(plain) = %v", got)
	}
	if CodeFailedPrecondition.String() != "FailedPrecondition" {
		t.Fatal(CodeFailedPrecondition.String())
	}
}

func TestConnCloneIsDeep(t *testing.T) {
	c := &Conn{ID: "a", Client: Side{
		Mechanism: Mechanism{Type: MechanismKernel, Params: map[string]string{"k": "v"}},
		IP:        IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}},
	}}
	d := c.Clone()
	d.Client.Mechanism.Params["k"] = "changed"
	d.Client.IP.Addrs[0] = netip.MustParsePrefix("10.0.0.2/32")
	if c.Client.Mechanism.Params["k"] != "v" || c.Client.IP.Addrs[0].String() != "10.0.0.1/32" {
		t.Fatalf("Clone shares memory with the original: %+v", c.Client)
	}
}

func TestStore(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"plain-id", "with/slash and space", "ünïcode"}
	for i, id := range ids {
		if err := s.Put(id, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	// Overwrite is atomic and replaces.
	if err := s.Put(ids[0], []byte(`{"n":9}`)); err != nil {
		t.Fatal(err)
	}
	// A leftover from a write interrupted by SIGKILL is ignored and removed.
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("never-there"); err != nil {
		t.Fatalf("Delete of an unknown id: %v", err)
	}
	reopened, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := reopened.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got[ids[0]]) != `{"n":9}` || string(got[ids[2]]) != `{"n":2}` {
		t.Fatalf("Load = %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Fatal("temporary leftover not removed")
	}
}

func TestAdoptEach(t *testing.T) {
	var wanted []*Conn
	for _, id := range []string{"a", "b", "c", "d"} {
		wanted = append(wanted, &Conn{ID: id})
	}
	var running, most atomic.Int32
	res := ReconcileResult{}
	AdoptEach(&res, wanted, 2, func(c *Conn) (bool, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(10 * time.Millisecond)
		switch c.ID {
		case "a":
			return false, nil
		case "b":
			return true, nil
		default:
			return false, errors.New("gone")
		}
	})
	if !slices.Equal(res.Adopted, []string{"a"}) || !slices.Equal(res.Rebuilt, []string{"b"}) || len(res.Failed) != 2 || res.Failed["c"] == nil || res.Failed["d"] == nil {
		t.Fatalf("result %+v", res)
	}
	if m := most.Load(); m > 2 {
		t.Fatalf("%d ran at once, want at most 2 workers", m)
	}
}
