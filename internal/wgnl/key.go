package wgnl

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// KeyLen is the length of WireGuard keys (WG_KEY_LEN).
const KeyLen = 32

// Key is a Curve25519 key, private or public.
type Key [KeyLen]byte

// GenerateKey returns a new private key.
func GenerateKey() (Key, error) {
	var k Key
	p, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return k, fmt.Errorf("wireguard key: %w", err)
	}
	copy(k[:], p.Bytes())
	return k, nil
}

// PublicKey returns the public key of private key k, as the kernel derives
// it (the scalar is clamped either way).
func (k Key) PublicKey() Key {
	var pub Key
	p, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil { // only for a wrong length, which Key cannot have
		return pub
	}
	copy(pub[:], p.PublicKey().Bytes())
	return pub
}

// IsZero reports whether k is all zeros (no key: the kernel's "unset").
func (k Key) IsZero() bool { return k == Key{} }

// String is the base64 form NSM's parameters and wg(8) use.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey parses a base64 key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return k, fmt.Errorf("%q is not a base64 WireGuard key (%d bytes)", s, KeyLen)
	}
	copy(k[:], b)
	return k, nil
}
