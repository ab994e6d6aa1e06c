package controlplane

import (
	"strings"
	"testing"

	"github.com/networkservicemesh/api/pkg/api/networkservice"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// offeringDP builds KERNEL and VXLAN and offers its tunnel end.
type offeringDP struct{ *fakeDP }

func (offeringDP) Mechanisms(forwarder.SideKind) []string {
	return []string{forwarder.MechanismKernel, forwarder.MechanismVXLAN}
}

func (offeringDP) Offer(typ string, _ forwarder.Payload) (map[string]string, bool) {
	if typ == forwarder.MechanismVXLAN {
		return map[string]string{forwarder.ParamSrcIP: "192.0.2.1", forwarder.ParamSrcPort: "4789"}, true
	}
	return nil, true
}

func TestOffersAndPriority(t *testing.T) {
	for _, tt := range []struct {
		priority []string
		want     []string
	}{
		{nil, []string{"LOCAL/KERNEL", "REMOTE/VXLAN"}},
		{[]string{forwarder.MechanismVXLAN}, []string{"REMOTE/VXLAN", "LOCAL/KERNEL"}},
		{[]string{"MEMIF", forwarder.MechanismKernel}, []string{"LOCAL/KERNEL", "REMOTE/VXLAN"}},
	} {
		s, err := New(Options{Name: "fwd", Dataplane: offeringDP{newFakeDP()}, NextHop: networkservice.NewNetworkServiceClient(nil), MechanismPriority: tt.priority})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range s.endpointPreferences(forwarder.PayloadEthernet) {
			got = append(got, m.GetCls()+"/"+m.GetType())
			if m.GetType() == forwarder.MechanismVXLAN && (m.GetParameters()[forwarder.ParamSrcIP] != "192.0.2.1" || m.GetParameters()[forwarder.ParamSrcPort] != "4789") {
				t.Errorf("VXLAN offer without our tunnel end: %v", m.GetParameters())
			}
		}
		if len(got) != len(tt.want) || got[0] != tt.want[0] || got[1] != tt.want[1] {
			t.Errorf("priority %v: offers %v, want %v", tt.priority, got, tt.want)
		}
		// The caller's preferences are reordered the same way.
		prefs := []*networkservice.Mechanism{
			{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel, Parameters: map[string]string{forwarder.ParamNetNSURL: "inode://1/2"}},
			{Cls: forwarder.ClsRemote, Type: forwarder.MechanismVXLAN, Parameters: map[string]string{forwarder.ParamSrcIP: "192.0.2.9"}},
		}
		m, err := s.clientMechanism(&networkservice.Connection{}, prefs, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, want, _ := strings.Cut(tt.want[0], "/"); m.GetType() != want {
			t.Errorf("priority %v: chose %s", tt.priority, m.GetType())
		}
	}
}
