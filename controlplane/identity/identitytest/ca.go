// Package identitytest is a throwaway SPIFFE certificate authority for
// tests: it issues X.509 SVIDs (ECDSA P-256, as SPIRE does by default) and
// JWT SVIDs for any SPIFFE ID of its trust domain.
package identitytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a trust domain's root of trust for X.509 and JWT SVIDs.
type CA struct {
	TD     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	jwtKey *ecdsa.PrivateKey
	jwtKID string
	// SVIDTTL is the lifetime of the SVIDs issued; default one hour.
	SVIDTTL time.Duration
}

// New returns a CA for trustDomain (e.g. "nsmfwd.test").
func New(trustDomain string) (*CA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"nsmfwd test CA"}},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &CA{TD: td, cert: cert, key: key, jwtKey: jwtKey, jwtKID: "nsmfwd-test-jwt", SVIDTTL: time.Hour}, nil
}

// X509Bundle is the CA's X.509 trust bundle.
func (ca *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TD, []*x509.Certificate{ca.cert})
}

// JWTBundle is the CA's JWT trust bundle.
func (ca *CA) JWTBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(ca.TD, map[string]crypto.PublicKey{ca.jwtKID: ca.jwtKey.Public()})
}

// X509SVID issues an X.509 SVID for id (a SPIFFE ID of the CA's trust
// domain), valid for SVIDTTL.
func (ca *CA) X509SVID(id string) (*x509svid.SVID, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return nil, err
	}
	if !sid.MemberOf(ca.TD) {
		return nil, fmt.Errorf("identitytest: %s is not in trust domain %s", id, ca.TD)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		URIs:         []*url.URL{sid.URL()},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(ca.SVIDTTL),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// JWTSVID issues a JWT SVID for id with the given audience.
func (ca *CA) JWTSVID(id string, audience []string) (string, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: ca.jwtKey, KeyID: ca.jwtKID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.Signed(signer).Claims(jwt.Claims{
		Subject:  sid.String(),
		Audience: audience,
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ca.SVIDTTL)),
	}).Serialize()
}

// Source is a fixed SVID with the CA's bundle: an identity.Source without
// a Workload API.
type Source struct {
	SVID   *x509svid.SVID
	Bundle *x509bundle.Bundle
}

// Source issues an X.509 SVID for id and returns it as a Source.
func (ca *CA) Source(id string) (*Source, error) {
	svid, err := ca.X509SVID(id)
	if err != nil {
		return nil, err
	}
	return &Source{SVID: svid, Bundle: ca.X509Bundle()}, nil
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.SVID, nil }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.Bundle.TrustDomain() {
		return nil, fmt.Errorf("identitytest: no bundle for trust domain %s", td)
	}
	return s.Bundle, nil
}
