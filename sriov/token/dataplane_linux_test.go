package token_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
	"github.com/nsmfwd/nsmfwd/sriov/token"
)

// TestDataplaneResolvesTokenID: a client whose mechanism carries a token
// ID (as NSM's client takes it from NSM_SRIOV_TOKENS_<name>) gets a VF of
// the pool that ID names; an ID the pool never issued is refused.
func TestDataplaneResolvesTokenID(t *testing.T) {
	nstest.RequireRoot(t)
	_, node := nstest.New(t)
	_, client := nstest.New(t)
	_, endpoint := nstest.New(t)
	nic := sriovtest.NewNIC(t, node)
	cfg := nic.Config()
	// No default pool, and two pools on the PF: only the token ID names it.
	cfg.DefaultToken = ""
	cfg.PhysicalFunctions[0].Capabilities = []string{"10G", "intel"}
	counts, err := token.Counts(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := token.Open(t.TempDir(), counts)
	if err != nil {
		t.Fatal(err)
	}
	dp, err := sriov.New(context.Background(), sriov.Options{
		Name: "fwd", Config: cfg, StateDir: t.TempDir(), HostNetNS: node, SysfsRoot: nic.SysfsRoot,
		PFLink: nic.Link, PCIDriver: nic.PCI, Cgroups: &sriovtest.Cgroups{}, TokenResolver: pool.Resolve,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ctx := context.Background()
	conn := func(n int, tokenID string) *forwarder.Conn {
		return &forwarder.Conn{
			ID: fmt.Sprintf("conn-%d", n), Payload: forwarder.PayloadEthernet, MTU: 1400,
			Client: forwarder.Side{
				Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel,
					Params: map[string]string{forwarder.ParamNetNSURL: "file://" + client, forwarder.ParamIfName: fmt.Sprintf("nsm%d", n),
						sriov.ParamTokenID: tokenID}},
				IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.0.%d.1/24", n))}},
			},
			Endpoint: forwarder.Side{
				Mechanism: forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel,
					Params: map[string]string{forwarder.ParamNetNSURL: "file://" + endpoint, forwarder.ParamIfName: fmt.Sprintf("nse%d", n)}},
				IP: forwarder.IPConfig{Addrs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.0.%d.2/24", n))}},
			},
		}
	}

	bad := conn(1, "not-a-token-we-issued")
	if err := dp.Check(ctx, bad.ID, forwarder.SideClient, bad.Client.Mechanism); forwarder.CodeOf(err) != forwarder.CodeInvalidArgument {
		t.Fatalf("unknown token id: %v", err)
	}

	id := pool.IDs("sriov-a.example/intel")[0]
	c := conn(2, id)
	if err := dp.Check(ctx, c.ID, forwarder.SideClient, c.Client.Mechanism); err != nil {
		t.Fatal(err)
	}
	if err := dp.Connect(ctx, c); err != nil {
		t.Fatal(err)
	}
	if pci := c.Client.Mechanism.Param(sriov.ParamPCIAddress); pci == "" {
		t.Fatalf("client mechanism without a VF: %v", c.Client.Mechanism.Params)
	}
	if vlan := c.Client.Mechanism.Param(sriov.ParamVLAN); vlan != "100" {
		t.Fatalf("vlan %q", vlan)
	}
	if err := dp.Disconnect(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if changed := nic.Link.Changed(); len(changed) > 0 {
		t.Fatalf("VF settings not restored: %v", changed)
	}
}
