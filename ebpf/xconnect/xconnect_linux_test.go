package xconnect

import (
	"net"
	"testing"

	"go.uber.org/goleak"

	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSpecConstants(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	spec, err := Spec(Config{ClientIfindex: 7, EndpointIfindex: 9, PeerClient: true, PeerEndpoint: true, IPMode: true, ClientMAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	var idx uint32
	if err := spec.Variables["endpoint_ifindex"].Get(&idx); err != nil || idx != 9 {
		t.Fatalf("endpoint_ifindex = %d, %v", idx, err)
	}
	var got [6]byte
	if err := spec.Variables["client_mac"].Get(&got); err != nil || net.HardwareAddr(got[:]).String() != mac.String() {
		t.Fatalf("client_mac = %v, %v", got, err)
	}
}

func TestProbe(t *testing.T) {
	nstest.RequireRoot(t)
	if err := Probe(); err != nil {
		t.Fatal(err)
	}
}
