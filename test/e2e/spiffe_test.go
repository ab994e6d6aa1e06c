package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmfwd/nsmfwd/controlplane"
	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/internal/netns/nstest"
)

// TestSPIFFE runs the real binaries with SPIFFE: nsmfwd, nse and nsmctl
// each get their SVID from a fake Workload API (one socket per identity).
// nsmctl connects as one identity over mTLS with a signed token; another
// identity can neither see nor close the connection; a plaintext nsmctl is
// refused; the owner closes it and nothing is left.
func TestSPIFFE(t *testing.T) {
	w := newWorld(t, "e2e-spiffe")
	wapi, err := identitytest.NewWorkloadAPI(w.dir, "nsmfwd.test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wapi.Stop)
	sock := func(name string) string {
		s, err := wapi.Socket(name, "spiffe://nsmfwd.test/"+name)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	w.startNSE("SPIFFE_ENDPOINT_SOCKET="+sock("nse"), "NSM_SERVICE_NAMES=icmp-responder")
	w.fwdEnv = []string{"NSM_INSECURE=false", "SPIFFE_ENDPOINT_SOCKET=" + sock(w.name)}
	w.startForwarder()
	before := w.links()
	fwdURL := "unix://" + filepath.Join(w.dir, "fwd.sock")
	alice, bob := sock("alice"), sock("bob")

	out, err := w.nsmctlAs(alice, "connect", "--addr", fwdURL, "--service", "icmp-responder",
		"--netns", "/run/netns/"+w.client, "--ifname", "nsm0", "--id", "a1", "--output", "json")
	if err != nil {
		t.Fatalf("nsmctl connect with SPIFFE: %v\n%s", err, out)
	}
	var ci struct {
		EndpointAddrs []string `json:"endpoint_addrs"`
	}
	if err := json.Unmarshal([]byte(out), &ci); err != nil || len(ci.EndpointAddrs) == 0 {
		t.Fatalf("nsmctl connect output %q: %v", out, err)
	}
	dst := netip.MustParsePrefix(ci.EndpointAddrs[0]).Addr()
	if out, err := nstest.Exec(t, w.client, "ping", "-c", "2", "-i", "0.2", "-W", "2", dst.String()); err != nil {
		t.Fatalf("ping %s over the vWire: %v\n%s", dst, err, out)
	}

	// Monitor per identity: alice sees her connection, bob none.
	if out, err := w.nsmctlAs(alice, "list", "--addr", fwdURL, "--output", "json"); err != nil || !strings.Contains(out, `"a1"`) {
		t.Fatalf("nsmctl list as the owner: %v\n%s", err, out)
	}
	if out, err := w.nsmctlAs(bob, "list", "--addr", fwdURL, "--output", "json"); err != nil || strings.Contains(out, `"a1"`) {
		t.Fatalf("nsmctl list as another identity shows the connection (or failed: %v)\n%s", err, out)
	}
	// Bob, knowing the connection, cannot close it.
	conn := w.connAs(alice, fwdURL)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	bobID, closer, err := identity.FromWorkloadAPI(ctx, bob, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	cc, err := controlplane.Dial(ctx, fwdURL, 5*time.Second, bobID.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	err = nsc.Close(ctx, networkservice.NewNetworkServiceClient(cc), conn)
	if status.Code(errorsUnwrapStatus(err)) != codes.PermissionDenied {
		t.Fatalf("close by another SPIFFE ID: %v, want PermissionDenied", err)
	}
	t.Logf("close by spiffe://nsmfwd.test/bob: %v", err)
	// Plaintext is refused.
	if out, err := w.nsmctlAs("", "list", "--addr", fwdURL, "--timeout", "3s"); err == nil {
		t.Fatalf("plaintext nsmctl list succeeded against the mTLS forwarder:\n%s", out)
	}

	if out, err := w.nsmctlAs(alice, "close", "--addr", fwdURL, "--id", "a1"); err != nil {
		t.Fatalf("nsmctl close by the owner: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if sameLinks(before, w.links()) {
			return
		}
	}
	t.Fatalf("links left after close: before %v, after %v", before, w.links())
}

// nsmctl runs the nsmctl binary with SPIFFE_ENDPOINT_SOCKET=spiffe (none
// when empty).
func (w *world) nsmctlAs(spiffe string, args ...string) (string, error) {
	w.t.Helper()
	cmd := exec.Command(filepath.Join(w.bin, "nsmctl"), args...)
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET="+spiffe)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// connAs returns the connection spiffe owns, as its Monitor shows it.
func (w *world) connAs(spiffe, fwdURL string) *networkservice.Connection {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.t.Context(), 10*time.Second)
	defer cancel()
	id, closer, err := identity.FromWorkloadAPI(ctx, spiffe, time.Minute)
	if err != nil {
		w.t.Fatal(err)
	}
	defer closer.Close()
	cc, err := controlplane.Dial(ctx, fwdURL, 5*time.Second, id.DialOptions()...)
	if err != nil {
		w.t.Fatal(err)
	}
	defer cc.Close()
	conns, err := nsc.List(ctx, networkservice.NewMonitorConnectionClient(cc), nil)
	if err != nil || len(conns) != 1 {
		w.t.Fatalf("monitor as the owner: %d connections, %v", len(conns), err)
	}
	for _, c := range conns {
		return c
	}
	return nil
}

func sameLinks(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, ",") != strings.Join(b[k], ",") {
			return false
		}
	}
	return true
}

// errorsUnwrapStatus returns the gRPC status error wrapped in err.
func errorsUnwrapStatus(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}
