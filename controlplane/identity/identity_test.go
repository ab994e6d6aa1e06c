package identity_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"go.uber.org/goleak"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/nsmfwd/nsmfwd/controlplane/identity"
	"github.com/nsmfwd/nsmfwd/controlplane/identity/identitytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const td = "nsmfwd.test"

func newID(t *testing.T, ca *identitytest.CA, name string) (identity.Identity, *identitytest.Source) {
	t.Helper()
	src, err := ca.Source("spiffe://" + td + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewSPIFFE(src, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return id, src
}

func tlsInfo(src *identitytest.Source) credentials.TLSInfo {
	var ti credentials.TLSInfo
	ti.State.PeerCertificates = src.SVID.Certificates
	return ti
}

// TestTokenAsNSM checks the token against what NSM's sdk writes and its
// policies read: ES256, subject ours, audience an array naming the peer.
func TestTokenAsNSM(t *testing.T) {
	ca, err := identitytest.New(td)
	if err != nil {
		t.Fatal(err)
	}
	fwd, fwdSrc := newID(t, ca, "fwd")
	_, nseSrc := newID(t, ca, "nse")
	tok, exp, err := fwd.Token(tlsInfo(nseSrc))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d <= 0 || d > time.Minute {
		t.Errorf("expiry in %v, want within the minute lifetime", d)
	}
	parts := strings.Split(tok, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	body, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var h, b map[string]any
	_ = json.Unmarshal(hdr, &h)
	_ = json.Unmarshal(body, &b)
	if h["alg"] != "ES256" {
		t.Errorf("alg %v, want ES256", h["alg"])
	}
	if aud, ok := b["aud"].([]any); !ok || len(aud) != 1 || aud[0] != "spiffe://"+td+"/nse" {
		t.Errorf("aud %#v, want [spiffe://%s/nse] as an array (NSM's tokens_chained iterates it)", b["aud"], td)
	}
	c, err := identity.Verify(tok, fwdSrc.SVID.Certificates[0].PublicKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "spiffe://"+td+"/fwd" {
		t.Errorf("sub %q", c.Subject)
	}
	if _, err := identity.Verify(tok, nseSrc.SVID.Certificates[0].PublicKey, time.Now()); err == nil {
		t.Error("token verified with another identity's key")
	}
	if _, err := identity.Verify(tok, fwdSrc.SVID.Certificates[0].PublicKey, time.Now().Add(2*time.Minute)); err == nil {
		t.Error("expired token verified")
	}
	expired, _ := identity.Sign(fwdSrc.SVID.PrivateKey, jwt.Claims{Subject: "x", Expiry: jwt.NewNumericDate(time.Now().Add(-time.Hour))})
	if _, err := identity.Verify(expired, fwdSrc.SVID.Certificates[0].PublicKey, time.Now()); err == nil {
		t.Error("token expired an hour ago verified")
	}
}

func incoming(src *identitytest.Source, tok string) context.Context {
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: tlsInfo(src)})
	if tok != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(identity.MetadataToken, tok,
			identity.MetadataExpires, time.Now().Add(time.Minute).Format(time.RFC3339Nano)))
	}
	return ctx
}

func TestAuthenticate(t *testing.T) {
	ca, err := identitytest.New(td)
	if err != nil {
		t.Fatal(err)
	}
	fwd, _ := newID(t, ca, "fwd")
	mgr, mgrSrc := newID(t, ca, "nsmgr")
	other, _ := newID(t, ca, "other")
	mgrTok, _, _ := mgr.Token(nil)
	otherTok, _, _ := other.Token(nil)

	seg := &networkservice.PathSegment{Name: "nsmgr", Token: "stale"}
	got, err := fwd.Authenticate(incoming(mgrSrc, mgrTok), seg)
	if err != nil || got != "spiffe://"+td+"/nsmgr" {
		t.Fatalf("Authenticate = %q, %v", got, err)
	}
	if seg.GetToken() != mgrTok || seg.GetExpires() == nil {
		t.Errorf("caller segment not updated from the metadata: %v", seg)
	}
	// TLS as NSMgr, token signed by someone else.
	if _, err := fwd.Authenticate(incoming(mgrSrc, otherTok), &networkservice.PathSegment{}); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("foreign token: %v, want ErrUnauthenticated", err)
	}
	// No token in the metadata: the segment's own must be the caller's.
	if _, err := fwd.Authenticate(incoming(mgrSrc, ""), &networkservice.PathSegment{Token: otherTok}); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("segment token of another identity: %v, want ErrUnauthenticated", err)
	}
	if _, err := fwd.Authenticate(incoming(mgrSrc, ""), &networkservice.PathSegment{Token: mgrTok}); err != nil {
		t.Errorf("segment token of the caller: %v", err)
	}
	// No certificate.
	if _, err := fwd.Authenticate(context.Background(), &networkservice.PathSegment{Token: mgrTok}); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Errorf("no peer: %v, want ErrUnauthenticated", err)
	}
	if id, all, err := fwd.Caller(incoming(mgrSrc, "")); err != nil || all || id != "spiffe://"+td+"/nsmgr" {
		t.Errorf("Caller = %q, %v, %v", id, all, err)
	}
}

func TestInsecure(t *testing.T) {
	i := identity.NewInsecure("fwd", time.Minute)
	seg := &networkservice.PathSegment{Name: "nsmgr-1"}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(identity.MetadataToken, "t1"))
	if got, err := i.Authenticate(ctx, seg); err != nil || got != "nsmgr-1" || seg.GetToken() != "t1" {
		t.Errorf("Authenticate = %q, %v (segment %v)", got, err, seg)
	}
	if got, err := i.Authenticate(context.Background(), nil); err != nil || got != "" {
		t.Errorf("Authenticate without caller = %q, %v", got, err)
	}
	if _, all, _ := i.Caller(context.Background()); !all {
		t.Error("insecure Monitor callers should see everything")
	}
}
