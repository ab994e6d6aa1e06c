package vppapi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.fd.io/govpp/adapter"
	"go.fd.io/govpp/adapter/mock"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/af_packet"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip_neighbor"
	"go.fd.io/govpp/binapi/l2"
	"go.fd.io/govpp/binapi/l3xc"
	"go.fd.io/govpp/binapi/memclnt"
	"go.fd.io/govpp/binapi/memif"
	"go.fd.io/govpp/binapi/vpe"
	"go.fd.io/govpp/codec"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// fakeVPP answers requests over govpp's mock adapter and records each one
// it decodes as a line, so that tests compare the exact message sequence an
// operation sends (golden traces). It fakes only the binary-API boundary,
// for message-sequence tests; test/conformance runs the dataplane against a
// real VPP.
type fakeVPP struct {
	*mock.VppAdapter

	mu     sync.Mutex
	trace  []string
	next   uint32
	failOn map[string][2]int32 // request name -> {calls to let pass, retval}
	byName map[string]api.Message
	unknow map[string]bool // names whose GetMsgID fails (an "incompatible" VPP)
}

func newFakeVPP() *fakeVPP {
	f := &fakeVPP{VppAdapter: mock.NewVppAdapter(), next: 1, failOn: map[string][2]int32{},
		byName: map[string]api.Message{}, unknow: map[string]bool{}}
	for _, m := range Messages() {
		f.byName[m.GetMessageName()] = m
	}
	f.MockReplyHandler(f.handle)
	return f
}

// GetMsgID fails for the names in unknow, as VPP does for a CRC it lacks.
func (f *fakeVPP) GetMsgID(name, crc string) (uint16, error) {
	f.mu.Lock()
	bad := f.unknow[name]
	f.mu.Unlock()
	if bad {
		return 0, fmt.Errorf("unknown message: %s_%s", name, crc)
	}
	return f.VppAdapter.GetMsgID(name, crc)
}

var _ adapter.VppAPI = (*fakeVPP)(nil)

// fail makes the request called name fail with retval rv after pass
// successful calls.
func (f *fakeVPP) fail(name string, pass int, rv int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOn[name] = [2]int32{int32(pass), rv}
}

// take returns the trace so far and starts a new one.
func (f *fakeVPP) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.trace
	f.trace = nil
	return t
}

func newOf(m api.Message) api.Message {
	return reflect.New(reflect.TypeOf(m).Elem()).Interface().(api.Message)
}

func (f *fakeVPP) handle(req mock.MessageDTO) ([]byte, uint16, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var reply api.Message
	switch {
	case req.MsgID == 100: // the mock's fixed id of control_ping
		reply = &memclnt.ControlPingReply{}
	case req.MsgName == "show_version":
		reply = &vpe.ShowVersionReply{Version: "25.10-release"}
	default:
		proto, ok := f.byName[req.MsgName]
		if !ok {
			panic("fake VPP: request " + req.MsgName + " is not in Messages()")
		}
		msg := newOf(proto)
		if err := codec.DefaultCodec.DecodeMsg(req.Data, msg); err != nil {
			panic(err)
		}
		f.trace = append(f.trace, describe(msg))
		r, ok := f.byName[req.MsgName+"_reply"]
		if !ok {
			panic("fake VPP: no reply type for " + req.MsgName)
		}
		reply = newOf(r)
		var rv int32
		if fo, ok := f.failOn[req.MsgName]; ok {
			if fo[0] == 0 {
				rv = fo[1]
				delete(f.failOn, req.MsgName)
			} else {
				f.failOn[req.MsgName] = [2]int32{fo[0] - 1, fo[1]}
			}
		}
		creates := strings.Contains(req.MsgName, "create")
		if sf, ok := msg.(*memif.MemifSocketFilenameAddDelV2); ok {
			creates = sf.IsAdd
		}
		f.fill(reply, rv, creates)
	}
	id, _ := f.VppAdapter.GetMsgID(reply.GetMessageName(), reply.GetCrcString())
	data, err := codec.DefaultCodec.EncodeMsg(reply, id)
	if err != nil {
		panic(err)
	}
	binary.BigEndian.PutUint32(data[2:6], req.ClientID)
	return data, id, true
}

// fill sets a reply's retval and, for a successful create, a fresh
// sw_if_index (or memif socket id).
func (f *fakeVPP) fill(r api.Message, rv int32, creates bool) {
	v := reflect.ValueOf(r).Elem()
	if fv := v.FieldByName("Retval"); fv.IsValid() {
		fv.SetInt(int64(rv))
	}
	if rv != 0 || !creates {
		return
	}
	if fv := v.FieldByName("SwIfIndex"); fv.IsValid() {
		fv.SetUint(uint64(f.next))
		f.next++
	}
	if fv := v.FieldByName("SocketID"); fv.IsValid() {
		fv.SetUint(uint64(100 + f.next))
		f.next++
	}
}

func describe(m api.Message) string {
	n := m.GetMessageName()
	switch m := m.(type) {
	case *memif.MemifSocketFilenameAddDelV2:
		file := ""
		if m.SocketFilename != "" {
			file = filepath.Base(m.SocketFilename)
		}
		return fmt.Sprintf("%s add=%v id=%d file=%s", n, m.IsAdd, int32(m.SocketID), file)
	case *memif.MemifCreateV2:
		return fmt.Sprintf("%s role=%v mode=%v socket=%d", n, m.Role, m.Mode, m.SocketID)
	case *memif.MemifDelete:
		return fmt.Sprintf("%s if=%d", n, m.SwIfIndex)
	case *interfaces.SwInterfaceTagAddDel:
		return fmt.Sprintf("%s if=%d add=%v tag=%s", n, m.SwIfIndex, m.IsAdd, m.Tag)
	case *interfaces.SwInterfaceSetFlags:
		return fmt.Sprintf("%s if=%d flags=%d", n, m.SwIfIndex, m.Flags)
	case *interfaces.SwInterfaceSetMtu:
		return fmt.Sprintf("%s if=%d mtu=%v", n, m.SwIfIndex, m.Mtu)
	case *l2.SwInterfaceSetL2Xconnect:
		return fmt.Sprintf("%s rx=%d tx=%d enable=%v", n, m.RxSwIfIndex, m.TxSwIfIndex, m.Enable)
	case *l3xc.L3xcDel:
		return fmt.Sprintf("%s if=%d ip6=%v", n, m.SwIfIndex, m.IsIP6)
	case *l3xc.L3xcUpdate:
		var paths []string
		for _, p := range m.L3xc.Paths {
			paths = append(paths, fmt.Sprintf("if=%d", p.SwIfIndex))
		}
		return fmt.Sprintf("%s if=%d ip6=%v via %s", n, m.L3xc.SwIfIndex, m.L3xc.IsIP6, strings.Join(paths, ","))
	case *ip_neighbor.IPNeighborAddDel:
		return fmt.Sprintf("%s add=%v if=%d ip=%s mac=%s", n, m.IsAdd, m.Neighbor.SwIfIndex, m.Neighbor.IPAddress, m.Neighbor.MacAddress)
	}
	return n
}

// memifWorld is a VPP dataplane over the fake with a private memif dir.
func memifWorld(t *testing.T) (*Dataplane, *fakeVPP, string) {
	t.Helper()
	f := newFakeVPP()
	c, err := Dial(context.Background(), ConnOptions{Adapter: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	dir := t.TempDir()
	d, err := New(context.Background(), Options{Name: "fwd", Conn: c, MemifDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	f.take()
	return d, f, dir
}

func memifConn(payload forwarder.Payload) *forwarder.Conn {
	return &forwarder.Conn{ID: "conn-1", Payload: payload, MTU: 1400,
		Client:   forwarder.Side{Mechanism: forwarder.Mechanism{Type: MechanismMemif}},
		Endpoint: forwarder.Side{Mechanism: forwarder.Mechanism{Type: MechanismMemif}},
	}
}

func requireTrace(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("message sequence differs\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func TestTraceMemifEthernet(t *testing.T) {
	d, f, dir := memifWorld(t)
	c := memifConn(forwarder.PayloadEthernet)
	if err := d.Connect(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	requireTrace(t, f.take(),
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_ETHERNET socket=101",
		"sw_interface_tag_add_del if=2 add=true tag=nsmfwd/fwd/conn-1/c",
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_ETHERNET socket=103",
		"sw_interface_tag_add_del if=4 add=true tag=nsmfwd/fwd/conn-1/e",
		"l3xc_del if=2 ip6=false", "l3xc_del if=2 ip6=true",
		"l3xc_del if=4 ip6=false", "l3xc_del if=4 ip6=true",
		"sw_interface_set_l2_xconnect rx=2 tx=4 enable=true",
		"sw_interface_set_l2_xconnect rx=4 tx=2 enable=true",
		"sw_interface_set_flags if=2 flags=1",
		"sw_interface_set_flags if=4 flags=1",
	)
	for _, s := range []forwarder.Side{c.Client, c.Endpoint} {
		p := s.Mechanism.Param(ParamSocketFile)
		if !strings.HasPrefix(p, dir+"/fwd/") {
			t.Fatalf("socketfile %q is not in the forwarder's memif dir %s", p, dir)
		}
		if _, err := os.Stat(filepath.Dir(p)); err != nil {
			t.Fatalf("memif socket dir: %v", err)
		}
	}
	if c.Client.Mechanism.Param(ParamSocketFile) == c.Endpoint.Mechanism.Param(ParamSocketFile) {
		t.Fatal("both sides got the same memif socket")
	}

	// A refresh creates nothing: it only re-asserts the cross-connect.
	if err := d.Connect(context.Background(), memifConn(forwarder.PayloadEthernet)); err != nil {
		t.Fatal(err)
	}
	for _, l := range f.take() {
		if strings.Contains(l, "create") || strings.Contains(l, "add=true id=") {
			t.Fatalf("refresh created something: %s", l)
		}
	}

	if err := d.Disconnect(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
	requireTrace(t, f.take(),
		"memif_delete if=2",
		"memif_socket_filename_add_del_v2 add=false id=101 file=",
		"memif_delete if=4",
		"memif_socket_filename_add_del_v2 add=false id=103 file=",
	)
	if ents, _ := os.ReadDir(filepath.Join(dir, "fwd")); len(ents) != 0 {
		t.Fatalf("memif dirs left after Disconnect: %v", ents)
	}
}

func TestTraceMemifIP(t *testing.T) {
	d, f, _ := memifWorld(t)
	if err := d.Connect(context.Background(), memifConn(forwarder.PayloadIP)); err != nil {
		t.Fatal(err)
	}
	requireTrace(t, f.take(),
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_IP socket=101",
		"sw_interface_tag_add_del if=2 add=true tag=nsmfwd/fwd/conn-1/c",
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_IP socket=103",
		"sw_interface_tag_add_del if=4 add=true tag=nsmfwd/fwd/conn-1/e",
		"sw_interface_set_l2_xconnect rx=2 tx=0 enable=false",
		"sw_interface_set_l2_xconnect rx=4 tx=0 enable=false",
		// memif in IP mode is point to point: no neighbour entries.
		"l3xc_update if=2 ip6=false via if=4", "l3xc_update if=2 ip6=true via if=4",
		"l3xc_update if=4 ip6=false via if=2", "l3xc_update if=4 ip6=true via if=2",
		"sw_interface_set_flags if=2 flags=1",
		"sw_interface_set_flags if=4 flags=1",
	)
}

// A failure after both sides exist rolls back everything Connect created,
// in VPP and on disk.
func TestTraceRollback(t *testing.T) {
	d, f, dir := memifWorld(t)
	f.fail("sw_interface_set_l2_xconnect", 1, -1)
	err := d.Connect(context.Background(), memifConn(forwarder.PayloadEthernet))
	if err == nil {
		t.Fatal("Connect succeeded although VPP refused the cross-connect")
	}
	got := f.take()
	requireTrace(t, got[len(got)-6:],
		"sw_interface_set_l2_xconnect rx=2 tx=4 enable=true",
		"sw_interface_set_l2_xconnect rx=4 tx=2 enable=true",
		"memif_delete if=2",
		"memif_socket_filename_add_del_v2 add=false id=101 file=",
		"memif_delete if=4",
		"memif_socket_filename_add_del_v2 add=false id=103 file=",
	)
	if ents, _ := os.ReadDir(filepath.Join(dir, "fwd")); len(ents) != 0 {
		t.Fatalf("memif dirs left after a failed Connect: %v", ents)
	}
	// Nothing is remembered: a Disconnect has nothing to delete but dumps.
	d.mu.RLock()
	n := len(d.live)
	d.mu.RUnlock()
	if n != 0 {
		t.Fatalf("failed connection kept in the live table")
	}

	// A failure creating the endpoint side removes the client side and
	// the endpoint's socket.
	f.fail("memif_create_v2", 1, -1)
	if err := d.Connect(context.Background(), memifConn(forwarder.PayloadEthernet)); err == nil {
		t.Fatal("Connect succeeded although VPP refused the memif")
	}
	requireTrace(t, f.take(),
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_ETHERNET socket=105",
		"sw_interface_tag_add_del if=6 add=true tag=nsmfwd/fwd/conn-1/c",
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_ETHERNET socket=107",
		"memif_delete if=6",
		"memif_socket_filename_add_del_v2 add=false id=105 file=",
		"memif_socket_filename_add_del_v2 add=false id=107 file=",
	)
}

// A call is not cut short by its caller's cancellation: a create whose
// reply nsmfwd abandoned would leave an object nobody knows about.
func TestCallSurvivesCancel(t *testing.T) {
	d, f, _ := memifWorld(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Connect(ctx, memifConn(forwarder.PayloadEthernet)); err != nil {
		t.Fatalf("Connect with a cancelled context: %v", err)
	}
	if n := len(f.take()); n != 14 {
		t.Fatalf("%d calls made, want the whole Connect (14)", n)
	}
}

func TestDialRefusesIncompatibleVPP(t *testing.T) {
	f := newFakeVPP()
	f.unknow["l3xc_update"] = true
	f.unknow["af_packet_create_v3_reply"] = true
	_, err := Dial(context.Background(), ConnOptions{Adapter: f})
	var ie *IncompatibleError
	if !errors.As(err, &ie) {
		t.Fatalf("Dial: %v, want an *IncompatibleError", err)
	}
	if ie.Version != "25.10-release" {
		t.Errorf("version %q, want VPP's own", ie.Version)
	}
	want := []string{"af_packet_create_v3_reply_" + (&af_packet.AfPacketCreateV3Reply{}).GetCrcString(), "l3xc_update_" + (&l3xc.L3xcUpdate{}).GetCrcString()}
	if !slices.Equal(ie.Messages, want) {
		t.Errorf("messages %v, want %v", ie.Messages, want)
	}
	for _, s := range append(want, "25.10-release", BinapiVersion) {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
}

func TestObserveSeesEveryCall(t *testing.T) {
	f := newFakeVPP()
	var mu sync.Mutex
	seen := map[string]int{}
	c, err := Dial(context.Background(), ConnOptions{Adapter: f, Observe: func(msg string, _ time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			msg += " error"
		}
		seen[msg]++
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f.fail("sw_interface_set_flags", 0, -2)
	err = c.Invoke(context.Background(), &interfaces.SwInterfaceSetFlags{SwIfIndex: 9, Flags: interface_types.IF_STATUS_API_FLAG_ADMIN_UP}, &interfaces.SwInterfaceSetFlagsReply{})
	if !errors.Is(err, api.INVALID_SW_IF_INDEX) {
		t.Fatalf("retval -2: %v, want INVALID_SW_IF_INDEX", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["show_version"] != 1 || seen["sw_interface_set_flags error"] != 1 {
		t.Fatalf("observed %v", seen)
	}
}

// After an endpoint died, only its side goes; the client's memif stays
// without a cross-connect, and a later Connect rebuilds the endpoint side.
func TestTraceDisconnectSide(t *testing.T) {
	d, f, dir := memifWorld(t)
	if err := d.Connect(context.Background(), memifConn(forwarder.PayloadEthernet)); err != nil {
		t.Fatal(err)
	}
	f.take()
	if err := d.DisconnectSide(context.Background(), "conn-1", forwarder.SideEndpoint); err != nil {
		t.Fatal(err)
	}
	requireTrace(t, f.take(),
		"sw_interface_set_l2_xconnect rx=2 tx=0 enable=false",
		"l3xc_del if=2 ip6=false", "l3xc_del if=2 ip6=true",
		"memif_delete if=4",
		"memif_socket_filename_add_del_v2 add=false id=103 file=",
	)
	if _, err := os.Stat(d.memifDir("conn-1", forwarder.SideClient)); err != nil {
		t.Fatalf("client memif dir gone with the endpoint side: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "fwd")); len(ents) != 1 {
		t.Fatalf("memif dirs after DisconnectSide: %v, want the client's only", ents)
	}
	if err := d.Connect(context.Background(), memifConn(forwarder.PayloadEthernet)); err != nil {
		t.Fatal(err)
	}
	requireTrace(t, f.take(),
		"memif_socket_filename_add_del_v2 add=true id=-1 file=memif.sock",
		"memif_create_v2 role=MEMIF_ROLE_API_MASTER mode=MEMIF_MODE_API_ETHERNET socket=105",
		"sw_interface_tag_add_del if=6 add=true tag=nsmfwd/fwd/conn-1/e",
		"l3xc_del if=2 ip6=false", "l3xc_del if=2 ip6=true",
		"l3xc_del if=6 ip6=false", "l3xc_del if=6 ip6=true",
		"sw_interface_set_l2_xconnect rx=2 tx=6 enable=true",
		"sw_interface_set_l2_xconnect rx=6 tx=2 enable=true",
		"sw_interface_set_flags if=2 flags=1",
		"sw_interface_set_flags if=6 flags=1",
	)
	// A memif side's Alive asks VPP for its peer (TestMemifPeerVPP).
}
