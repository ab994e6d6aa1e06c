package controlplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
	"github.com/nsmfwd/nsmfwd/forwarder"
)

// asCaller returns conn (as the caller got it back) with the caller's
// segment renamed, i.e. the same connection sent by another identity in
// insecure mode.
func asCaller(conn *networkservice.Connection, name string) *networkservice.Connection {
	c := conn.Clone()
	c.GetPath().GetPathSegments()[c.GetPath().GetIndex()].Name = name
	return c
}

func TestInsecureOwnerOnly(t *testing.T) {
	e := newEnv(t, "", nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	intruder := asCaller(conn, "intruder")
	if _, err := e.client.Request(t.Context(), refreshOf(intruder, time.Minute)); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("refresh by another identity: %v, want PermissionDenied", err)
	}
	if _, err := e.client.Close(t.Context(), intruder); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("close by another identity: %v, want PermissionDenied", err)
	}
	if n := len(e.srv.Connections()); n != 1 || len(e.nse.Calls("close")) != 0 || len(e.dp.Calls("disconnect")) != 0 {
		t.Fatalf("refused calls touched the connection: %d connections, nse %q, dataplane %q", n, e.nse.Calls(""), e.dp.Calls(""))
	}
	if _, err := e.client.Request(t.Context(), refreshOf(conn, time.Minute)); err != nil {
		t.Fatalf("refresh by the owner: %v", err)
	}
	if _, err := e.client.Close(t.Context(), conn); err != nil {
		t.Fatalf("close by the owner: %v", err)
	}
	if n := len(e.srv.Connections()); n != 0 {
		t.Fatalf("%d connections after the owner's Close", n)
	}
}

func TestOwnerSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, nil, nil)
	conn, err := e.client.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	e2 := newEnv(t, dir, nil, nil)
	if _, err := e2.client.Close(t.Context(), asCaller(conn, "intruder")); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("close by another identity after a restart: %v, want PermissionDenied", err)
	}
	if _, err := e2.client.Close(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
}

// spiffeEnv is an env whose forwarder serves mutual TLS with SVIDs from a
// throwaway CA, and clients with their own SVIDs.
type spiffeEnv struct {
	*env
	ca     *identitytest.CA
	fwdSrc *identitytest.Source
}

const testTD = "nsmfwd.test"

func newSPIFFEEnv(t *testing.T) *spiffeEnv {
	t.Helper()
	ca, err := identitytest.New(testTD)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.Source("spiffe://" + testTD + "/forwarder")
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := identity.NewSPIFFE(src, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", nil, nil, func(o *Options) { o.Identity = fwd })
	return &spiffeEnv{env: e, ca: ca, fwdSrc: src}
}

func spiffeIdentity(t *testing.T, ca *identitytest.CA, id string) identity.Identity {
	t.Helper()
	src, err := ca.Source(id)
	if err != nil {
		t.Fatal(err)
	}
	i, err := identity.NewSPIFFE(src, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// client returns clients toward the forwarder as SPIFFE ID id.
func (e *spiffeEnv) client(id string) (networkservice.NetworkServiceClient, networkservice.MonitorConnectionClient) {
	cc := e.dial(spiffeIdentity(e.t, e.ca, id).DialOptions()...)
	return networkservice.NewNetworkServiceClient(cc), networkservice.NewMonitorConnectionClient(cc)
}

func TestSPIFFEOwnerOnly(t *testing.T) {
	e := newSPIFFEEnv(t)
	alice, aliceMon := e.client("spiffe://" + testTD + "/nsmgr-a")
	bob, bobMon := e.client("spiffe://" + testTD + "/nsmgr-b")
	_, fwdMon := e.client("spiffe://" + testTD + "/forwarder")

	conn, err := alice.Request(t.Context(), newRequest("nsc-1", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// Our segment's token is a JWT signed by the forwarder's SVID, for
	// the caller.
	segs := conn.GetPath().GetPathSegments()
	claims, err := identity.Verify(segs[1].GetToken(), e.fwdSrc.SVID.Certificates[0].PublicKey, time.Now())
	if err != nil {
		t.Fatalf("forwarder segment token: %v", err)
	}
	if claims.Subject != "spiffe://"+testTD+"/forwarder" || !claims.Audience.Contains("spiffe://"+testTD+"/nsmgr-a") {
		t.Errorf("forwarder segment token: sub %q aud %q, want the forwarder for nsmgr-a", claims.Subject, claims.Audience)
	}
	if got := segs[0].GetToken(); got == "mgr-token" || strings.Count(got, ".") != 2 {
		t.Errorf("caller segment token %q: want the JWT from the call's metadata", got)
	}

	if _, err := bob.Request(t.Context(), refreshOf(conn, time.Minute)); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("refresh by another SPIFFE ID: %v, want PermissionDenied", err)
	}
	if _, err := bob.Close(t.Context(), conn); codeOf(err) != codes.PermissionDenied {
		t.Fatalf("close by another SPIFFE ID: %v, want PermissionDenied", err)
	}

	// Monitor: the owner sees its connection, the other caller nothing,
	// the forwarder's own identity everything.
	for name, tc := range map[string]struct {
		mc   networkservice.MonitorConnectionClient
		want int
	}{"owner": {aliceMon, 1}, "other": {bobMon, 0}, "forwarder": {fwdMon, 1}} {
		got, err := nsc.List(t.Context(), tc.mc, nil)
		if err != nil {
			t.Fatalf("%s: monitor: %v", name, err)
		}
		if len(got) != tc.want {
			t.Errorf("%s sees %d connections, want %d", name, len(got), tc.want)
		}
	}

	if _, err := alice.Request(t.Context(), refreshOf(conn, time.Minute)); err != nil {
		t.Fatalf("refresh by the owner: %v", err)
	}
	if _, err := alice.Close(t.Context(), conn); err != nil {
		t.Fatalf("close by the owner: %v", err)
	}
}

func TestSPIFFEUnauthenticated(t *testing.T) {
	e := newSPIFFEEnv(t)
	// TLS as alice, but the token in the call's metadata is signed by
	// someone else: the caller's segment is not the caller's.
	alice := spiffeIdentity(t, e.ca, "spiffe://"+testTD+"/nsmgr-a")
	mallory := spiffeIdentity(t, e.ca, "spiffe://"+testTD+"/mallory")
	opts := append(alice.DialOptions(), grpc.WithDefaultCallOptions(grpc.PerRPCCredentials(tokenFrom{mallory})))
	cc := e.dial(opts...)
	_, err := networkservice.NewNetworkServiceClient(cc).Request(t.Context(), newRequest("nsc-1", time.Minute))
	if codeOf(err) != codes.Unauthenticated {
		t.Fatalf("request with a token not signed by the caller: %v, want Unauthenticated", err)
	}
	if n := len(e.srv.Connections()); n != 0 || len(e.dp.Calls("")) > 1 {
		t.Fatalf("refused request did work: %d connections, dataplane %q", n, e.dp.Calls(""))
	}
	// No client certificate at all: the TLS handshake fails.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := Dial(ctx, "unix://"+e.fwdSock, time.Second, grpc.WithTransportCredentials(insecure.NewCredentials())); err == nil {
		t.Fatal("plaintext client connected to the mTLS server")
	}
}

// tokenFrom sends id's token in place of the connection's own.
type tokenFrom struct{ id identity.Identity }

func (c tokenFrom) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok, exp, err := c.id.Token(nil)
	return map[string]string{identity.MetadataToken: tok, identity.MetadataExpires: exp.Format(time.RFC3339Nano)}, err
}

func (tokenFrom) RequireTransportSecurity() bool { return true }

var _ credentials.PerRPCCredentials = tokenFrom{}

// TestFDPassing sends the client's namespace by descriptor (grpcfd, as
// NSM's NSMgr does over unix sockets): the dataplane is given the received
// descriptor, while the stored connection keeps the inode:// URL.
func TestFDPassing(t *testing.T) {
	e := newEnv(t, "", nil, nil, func(o *Options) { o.Identity = identity.NewInsecure(fwdName, time.Minute) })
	const nsPath = "/proc/self/ns/net"
	inodeURL, err := nsc.InodeURL(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	cc := e.dial(identity.NewInsecure("nsmgr-1", time.Minute).DialOptions()...)
	creds := grpcfd.PerRPCCredentials(nil)
	sender, _ := grpcfd.FromPerRPCCredentials(creds)
	errc := sender.SendFilename(nsPath)
	req := newRequest("nsc-1", time.Minute)
	req.MechanismPreferences[1].Parameters[forwarder.ParamNetNSURL] = inodeURL
	conn, err := networkservice.NewNetworkServiceClient(cc).Request(t.Context(), req, grpc.PerRPCCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("send fd: %v", err)
		}
	default:
	}
	id := conn.GetPath().GetPathSegments()[1].GetId()
	e.dp.mu.Lock()
	seen := e.dp.conns[id].Client.Mechanism.Params[forwarder.ParamNetNSURL]
	e.dp.mu.Unlock()
	if !strings.HasPrefix(seen, "file:///proc/") || !strings.Contains(seen, "/fd/") {
		t.Errorf("dataplane got namespace %q, want the received descriptor file:///proc/PID/fd/N", seen)
	}
	if got := e.srv.Connections()[id].GetMechanism().GetParameters()[forwarder.ParamNetNSURL]; got != inodeURL {
		t.Errorf("stored connection names namespace %q, want %q", got, inodeURL)
	}
	if got := conn.GetMechanism().GetParameters()[forwarder.ParamNetNSURL]; got != inodeURL {
		t.Errorf("answer names namespace %q, want %q", got, inodeURL)
	}
}
