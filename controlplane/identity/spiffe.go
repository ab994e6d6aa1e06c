package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// tokenLeeway tolerates clock skew between nodes when checking a token's
// expiry.
const tokenLeeway = 5 * time.Second

// Source is what NewSPIFFE needs: our X.509 SVID and the trust bundles to
// verify peers with. go-spiffe's workloadapi.X509Source is one.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// spiffeIdentity is NewSPIFFE's Identity.
type spiffeIdentity struct {
	src         Source
	maxLifetime time.Duration
	self        string
}

// NewSPIFFE returns the Identity backed by src: mutual TLS with X.509
// SVIDs (any peer whose SVID chains to a trust bundle of src is accepted at
// the TLS level, as NSM's components do) and path segment tokens signed
// with our SVID's key, valid for at most maxLifetime.
func NewSPIFFE(src Source, maxLifetime time.Duration) (Identity, error) {
	if maxLifetime <= 0 {
		maxLifetime = DefaultMaxTokenLifetime
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("identity: own X.509 SVID: %w", err)
	}
	if _, err := signingAlgorithm(svid.PrivateKey); err != nil {
		return nil, fmt.Errorf("identity: own X.509 SVID %s: %w", svid.ID, err)
	}
	return &spiffeIdentity{src: src, maxLifetime: maxLifetime, self: svid.ID.String()}, nil
}

func (s *spiffeIdentity) Insecure() bool { return false }
func (s *spiffeIdentity) Self() string   { return s.self }

func (s *spiffeIdentity) serverTLS() *tls.Config {
	c := tlsconfig.MTLSServerConfig(s.src, s.src, tlsconfig.AuthorizeAny())
	c.MinVersion = tls.VersionTLS12
	return c
}

func (s *spiffeIdentity) clientTLS() *tls.Config {
	c := tlsconfig.MTLSClientConfig(s.src, s.src, tlsconfig.AuthorizeAny())
	c.MinVersion = tls.VersionTLS12
	return c
}

func (s *spiffeIdentity) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.Creds(grpcfd.TransportCredentials(credentials.NewTLS(s.serverTLS())))}
}

func (s *spiffeIdentity) DialOptions() []grpc.DialOption {
	return dialOptions(credentials.NewTLS(s.clientTLS()), tokenCredentials{gen: s.Token, secure: true})
}

// Token signs a JWT with our SVID's key: subject our SPIFFE ID, audience
// the peer's when known, expiry now + the maximum lifetime but no later
// than our certificate or the peer's.
func (s *spiffeIdentity) Token(ai credentials.AuthInfo) (string, time.Time, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("identity: own X.509 SVID: %w", err)
	}
	exp := time.Now().Add(s.maxLifetime)
	if na := svid.Certificates[0].NotAfter; na.Before(exp) {
		exp = na
	}
	claims := tokenClaims{Subject: svid.ID.String(), Expiry: jwt.NewNumericDate(exp)}
	if cert := peerCertificate(ai); cert != nil {
		id, err := x509svid.IDFromCert(cert)
		if err != nil {
			return "", time.Time{}, fmt.Errorf("identity: peer certificate: %w", err)
		}
		claims.Audience = []string{id.String()}
		if cert.NotAfter.Before(exp) {
			exp = cert.NotAfter
			claims.Expiry = jwt.NewNumericDate(exp)
		}
	}
	tok, err := Sign(svid.PrivateKey, claims)
	if err != nil {
		return "", time.Time{}, err
	}
	return tok, exp, nil
}

func (s *spiffeIdentity) Authenticate(ctx context.Context, caller *networkservice.PathSegment) (string, error) {
	cert, err := callerCertificate(ctx)
	if err != nil {
		return "", err
	}
	if _, err := applyMetadataToken(ctx, caller); err != nil {
		return "", err
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return "", fmt.Errorf("%w: caller certificate: %w", ErrUnauthenticated, err)
	}
	if caller == nil {
		return "", fmt.Errorf("%w: %s names no path segment of its own", ErrUnauthenticated, id)
	}
	if _, err := Verify(caller.GetToken(), cert.PublicKey, time.Now()); err != nil {
		return "", fmt.Errorf("%w: the token of path segment %q is not signed by the caller %s: %w", ErrUnauthenticated, caller.GetName(), id, err)
	}
	return id.String(), nil
}

func (s *spiffeIdentity) Caller(ctx context.Context) (string, bool, error) {
	cert, err := callerCertificate(ctx)
	if err != nil {
		return "", false, err
	}
	id, err := x509svid.IDFromCert(cert)
	if err != nil {
		return "", false, fmt.Errorf("%w: caller certificate: %w", ErrUnauthenticated, err)
	}
	return id.String(), id.String() == s.self, nil
}

func callerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("%w: no peer in the call's context", ErrUnauthenticated)
	}
	cert := peerCertificate(p.AuthInfo)
	if cert == nil {
		return nil, fmt.Errorf("%w: the caller presented no TLS certificate", ErrUnauthenticated)
	}
	return cert, nil
}

func peerCertificate(ai credentials.AuthInfo) *x509.Certificate {
	var certs []*x509.Certificate
	switch v := ai.(type) {
	case credentials.TLSInfo:
		certs = v.State.PeerCertificates
	case *credentials.TLSInfo:
		certs = v.State.PeerCertificates
	}
	if len(certs) == 0 {
		return nil
	}
	return certs[0]
}

// signingAlgorithm is the JWS algorithm for key. SPIRE's default SVID key
// is ECDSA P-256, hence ES256, the only one NSM's OPA policies verify.
func signingAlgorithm(key crypto.PrivateKey) (jose.SignatureAlgorithm, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
	case *rsa.PrivateKey:
		return jose.RS256, nil
	case ed25519.PrivateKey:
		return jose.EdDSA, nil
	}
	return "", fmt.Errorf("unsupported SVID key type %T", key)
}

// tokenClaims are the claims of our path segment tokens. The audience is
// always a JSON array, as NSM's sdk writes it: NSM's tokens_chained policy
// iterates it, which fails on the single string go-jose's jwt.Claims
// writes for one audience.
type tokenClaims struct {
	Subject  string           `json:"sub,omitempty"`
	Audience []string         `json:"aud,omitempty"`
	Expiry   *jwt.NumericDate `json:"exp,omitempty"`
}

// Sign returns claims (a struct that encodes to a JSON object) as a compact
// JWT signed with key.
func Sign(key crypto.PrivateKey, claims any) (string, error) {
	alg, err := signingAlgorithm(key)
	if err != nil {
		return "", fmt.Errorf("identity: sign token: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("identity: sign token: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("identity: sign token: %w", err)
	}
	return tok, nil
}

// verifyAlgorithms are the JWS algorithms Verify accepts.
var verifyAlgorithms = []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.RS256, jose.EdDSA}

// Verify checks that token is a JWT signed by the key behind pub and not
// expired at now, and returns its claims.
func Verify(token string, pub crypto.PublicKey, now time.Time) (*jwt.Claims, error) {
	if token == "" {
		return nil, errors.New("no token")
	}
	tok, err := jwt.ParseSigned(token, verifyAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("parse token: %w", err)
	}
	var c jwt.Claims
	if err := tok.Claims(pub, &c); err != nil {
		return nil, fmt.Errorf("token signature: %w", err)
	}
	if c.Expiry == nil {
		return nil, errors.New("token has no expiry")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: now}, tokenLeeway); err != nil {
		return nil, fmt.Errorf("token claims: %w", err)
	}
	return &c, nil
}

// FromWorkloadAPI connects to the SPIFFE Workload API at addr (a
// SPIFFE_ENDPOINT_SOCKET value such as unix:///run/spire/sockets/agent.sock),
// waits for our first X.509 SVID (bounded by ctx) and returns the Identity
// backed by it. SVIDs and bundles are rotated in the background until the
// returned source is closed.
func FromWorkloadAPI(ctx context.Context, addr string, maxLifetime time.Duration) (Identity, io.Closer, error) {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return nil, nil, fmt.Errorf("identity: SPIFFE Workload API at %s: %w", addr, err)
	}
	id, err := NewSPIFFE(src, maxLifetime)
	if err != nil {
		_ = src.Close()
		return nil, nil, err
	}
	return id, src, nil
}
