package identitytest

// This file is a small SPIFFE Workload API server for tests, built on
// go-spiffe v2.6.0's Workload API protobufs: the CA issues X.509 and JWT
// SVIDs, and each unix socket the server listens on stands for one
// workload, so a test gives every process or component its own identity by
// giving it its own SPIFFE_ENDPOINT_SOCKET. SPIRE tells workloads apart by
// attesting the calling process instead; one socket per identity keeps
// tests free of that.

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// WorkloadAPI serves the Workload API on one socket per identity.
type WorkloadAPI struct {
	CA  *CA
	dir string

	mu      sync.Mutex
	servers []*grpc.Server
	wg      sync.WaitGroup
}

// NewWorkloadAPI returns a WorkloadAPI whose sockets live in dir, with a
// fresh CA for trustDomain.
func NewWorkloadAPI(dir, trustDomain string) (*WorkloadAPI, error) {
	ca, err := New(trustDomain)
	if err != nil {
		return nil, err
	}
	return &WorkloadAPI{CA: ca, dir: dir}, nil
}

// Socket starts serving the identity spiffeID on a new socket and returns
// its SPIFFE_ENDPOINT_SOCKET value (unix:///path).
func (s *WorkloadAPI) Socket(name, spiffeID string) (string, error) {
	path := filepath.Join(s.dir, "workload-api-"+name+".sock")
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return "", fmt.Errorf("identitytest: listen %s: %w", path, err)
	}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, &workloadAPI{ca: s.CA, id: spiffeID})
	s.mu.Lock()
	s.servers = append(s.servers, gs)
	s.mu.Unlock()
	s.wg.Go(func() { _ = gs.Serve(l) })
	return "unix://" + path, nil
}

// Stop stops every socket, ending the streams of their clients.
func (s *WorkloadAPI) Stop() {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	for _, gs := range servers {
		gs.Stop()
	}
	s.wg.Wait()
}

// workloadAPI is one workload's view of the Workload API.
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	ca *CA
	id string
}

// checkHeader enforces the Workload API's security header, as SPIRE does.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	return nil
}

func concatDER(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		b.Write(c.Raw)
	}
	return b.Bytes()
}

func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	svid, err := w.ca.X509SVID(w.id)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	key, err := x509.MarshalPKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    w.id,
		X509Svid:    concatDER(svid.Certificates),
		X509SvidKey: key,
		Bundle:      concatDER(w.ca.X509Bundle().X509Authorities()),
	}}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (w *workloadAPI) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	if err := stream.Send(&workload.X509BundlesResponse{Bundles: map[string][]byte{
		w.ca.TD.IDString(): concatDER(w.ca.X509Bundle().X509Authorities()),
	}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (w *workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.GetAudience()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSpiffeId() != "" && req.GetSpiffeId() != w.id {
		return nil, status.Errorf(codes.PermissionDenied, "no identity %q for this workload", req.GetSpiffeId())
	}
	tok, err := w.ca.JWTSVID(w.id, req.GetAudience())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: w.id, Svid: tok}}}, nil
}

func (w *workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	if err := checkHeader(stream.Context()); err != nil {
		return err
	}
	jwks, err := w.ca.JWTBundle().Marshal()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{w.ca.TD.IDString(): jwks}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	tok, err := jwt.ParseSigned(req.GetSvid(), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var claims jwt.Claims
	var raw map[string]any
	var verr error
	for _, key := range w.ca.JWTBundle().JWTAuthorities() {
		if verr = tok.Claims(key, &claims, &raw); verr == nil {
			break
		}
	}
	if verr != nil {
		return nil, status.Error(codes.InvalidArgument, verr.Error())
	}
	if err := claims.Validate(jwt.Expected{AnyAudience: jwt.Audience{req.GetAudience()}}); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	st, err := structpb.NewStruct(normalize(raw))
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: claims.Subject, Claims: st}, nil
}

// normalize turns JSON numbers and nested values into what structpb takes.
func normalize(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch t := v.(type) {
		case []string:
			l := make([]any, len(t))
			for i, s := range t {
				l[i] = s
			}
			out[k] = l
		default:
			out[k] = v
		}
	}
	return out
}
