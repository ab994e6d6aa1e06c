// Package identity authenticates NSM peers and signs path segment tokens
// the way NSM's sdk v1.18.0 does, so nsmfwd interoperates with NSMgr,
// endpoints and clients built on it.
//
// With SPIFFE (NewSPIFFE) every gRPC connection is mutual TLS with X.509
// SVIDs, and a path segment token is a JWT signed with the private key of
// the signer's X.509 SVID: subject its own SPIFFE ID, audience the peer's,
// expiry no later than either certificate. A caller sends its token in the
// call's metadata (nsm-client-token, nsm-client-token-expires); the server
// puts it in the caller's path segment and accepts the call only if the
// token verifies with the caller's TLS certificate. The caller's identity
// is its SPIFFE ID.
//
// Insecure (NewInsecure) is for development and tests: plaintext gRPC,
// unsigned opaque tokens, and a caller's identity is the name of its path
// segment, which anyone can claim. It guards against mistakes, not attacks.
package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/edwarnicke/grpcfd"
	"github.com/networkservicemesh/api/pkg/api/networkservice"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Metadata keys of the caller's token, as NSM's sdk (pkg/tools/token) sends
// them.
const (
	MetadataToken   = "nsm-client-token" //nolint:gosec // G101: a metadata key, not a credential
	MetadataExpires = "nsm-client-token-expires"
)

// DefaultMaxTokenLifetime bounds the tokens an Identity generates when its
// options leave the lifetime at zero.
const DefaultMaxTokenLifetime = 10 * time.Minute

// ErrUnauthenticated is the cause of every authentication failure: a caller
// without a certificate or with a token its certificate did not sign.
var ErrUnauthenticated = errors.New("identity: caller not authenticated")

// Identity is how nsmfwd proves who it is and learns who its callers are.
type Identity interface {
	// Insecure reports whether connections are plaintext and identities
	// unauthenticated.
	Insecure() bool
	// Self is our own identity: our SPIFFE ID, or our name when insecure.
	Self() string
	// ServerOptions return the options a gRPC server needs: transport
	// credentials, wrapped by grpcfd so unix socket callers can pass file
	// descriptors.
	ServerOptions() []grpc.ServerOption
	// DialOptions return the options a gRPC client needs: transport
	// credentials (grpcfd-wrapped), the per-call token and the
	// interceptors that let per-call credentials combine.
	DialOptions() []grpc.DialOption
	// Token returns a token for our own path segment toward peer (nil
	// when unknown) and its expiry.
	Token(peer credentials.AuthInfo) (string, time.Time, error)
	// Authenticate identifies the caller of an incoming call. caller is the
	// caller's path segment (nil when the call names none): when the call
	// carries a token in its metadata it is stored there, as NSM's
	// updatetoken does, then the segment's token is checked against the
	// caller's certificate. The error wraps ErrUnauthenticated.
	Authenticate(ctx context.Context, caller *networkservice.PathSegment) (string, error)
	// Caller returns the identity of the caller of a call that carries no
	// path (MonitorConnections), and whether that identity may see every
	// connection (our own identity, e.g. nsmctl run in our container, or
	// anyone when insecure).
	Caller(ctx context.Context) (id string, all bool, err error)
}

// applyMetadataToken copies the caller's token and expiry from the call's
// metadata into seg. It reports whether the metadata had a token.
func applyMetadataToken(ctx context.Context, seg *networkservice.PathSegment) (bool, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return false, nil
	}
	toks := md.Get(MetadataToken)
	if len(toks) == 0 {
		return false, nil
	}
	if len(toks) != 1 {
		return false, fmt.Errorf("%w: %d %s values in the call's metadata", ErrUnauthenticated, len(toks), MetadataToken)
	}
	if seg == nil {
		return true, nil
	}
	seg.Token = toks[0]
	if exps := md.Get(MetadataExpires); len(exps) == 1 {
		exp, err := time.Parse(time.RFC3339Nano, exps[0])
		if err != nil {
			return false, fmt.Errorf("%w: %s %q: %w", ErrUnauthenticated, MetadataExpires, exps[0], err)
		}
		seg.Expires = timestamppb.New(exp)
	}
	return true, nil
}

// tokenCredentials sends our token in each call's metadata, as NSM's
// sdk's per-RPC credentials do.
type tokenCredentials struct {
	gen    func(credentials.AuthInfo) (string, time.Time, error)
	secure bool
}

func (c tokenCredentials) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	var ai credentials.AuthInfo
	if p, ok := peer.FromContext(ctx); ok {
		ai = p.AuthInfo
	}
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok && ri.AuthInfo != nil {
		ai = ri.AuthInfo
	}
	tok, exp, err := c.gen(ai)
	if err != nil {
		return nil, fmt.Errorf("path segment token: %w", err)
	}
	return map[string]string{MetadataToken: tok, MetadataExpires: exp.Format(time.RFC3339Nano)}, nil
}

func (c tokenCredentials) RequireTransportSecurity() bool { return c.secure }

func dialOptions(tc credentials.TransportCredentials, tokens tokenCredentials) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(grpcfd.TransportCredentials(tc)),
		grpc.WithDefaultCallOptions(grpc.PerRPCCredentials(tokens)),
		grpcfd.WithChainUnaryInterceptor(),
		grpcfd.WithChainStreamInterceptor(),
	}
}

// insecureIdentity is NewInsecure's Identity.
type insecureIdentity struct {
	name        string
	maxLifetime time.Duration
}

// NewInsecure returns the development Identity: plaintext gRPC, opaque
// tokens naming name, and callers identified by their path segment's name.
func NewInsecure(name string, maxLifetime time.Duration) Identity {
	if maxLifetime <= 0 {
		maxLifetime = DefaultMaxTokenLifetime
	}
	return &insecureIdentity{name: name, maxLifetime: maxLifetime}
}

func (i *insecureIdentity) Insecure() bool { return true }
func (i *insecureIdentity) Self() string   { return i.name }

func (i *insecureIdentity) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.Creds(grpcfd.TransportCredentials(insecure.NewCredentials()))}
}

func (i *insecureIdentity) DialOptions() []grpc.DialOption {
	return dialOptions(insecure.NewCredentials(), tokenCredentials{gen: i.Token})
}

func (i *insecureIdentity) Token(credentials.AuthInfo) (string, time.Time, error) {
	return i.name + "-" + rand.Text(), time.Now().Add(i.maxLifetime), nil
}

func (i *insecureIdentity) Authenticate(ctx context.Context, caller *networkservice.PathSegment) (string, error) {
	if _, err := applyMetadataToken(ctx, caller); err != nil {
		return "", err
	}
	return caller.GetName(), nil
}

func (i *insecureIdentity) Caller(context.Context) (string, bool, error) { return "", true, nil }

// PlaintextDialOptions are dial options for a plaintext client that sends
// no token of its own (the caller's segment carries it, as nsmctl's does)
// but can pass file descriptors over unix sockets.
func PlaintextDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(grpcfd.TransportCredentials(insecure.NewCredentials())),
		grpcfd.WithChainUnaryInterceptor(),
		grpcfd.WithChainStreamInterceptor(),
	}
}
