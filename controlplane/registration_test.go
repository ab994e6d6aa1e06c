package controlplane

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/networkservicemesh/api/pkg/api/registry"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeRegistry records calls; it grants at most maxLife and can fail the
// first failures calls.
type fakeRegistry struct {
	mu       sync.Mutex
	calls    []string
	failures int
	err      error
	maxLife  time.Duration
	last     *registry.NetworkServiceEndpoint
}

func (f *fakeRegistry) Register(_ context.Context, nse *registry.NetworkServiceEndpoint, _ ...grpc.CallOption) (*registry.NetworkServiceEndpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("register %s t=%s", nse.GetName(), time.Now().Format("15:04:05")))
	if f.failures > 0 {
		f.failures--
		return nil, status.Error(codes.Unavailable, "registry down")
	}
	if f.err != nil {
		return nil, f.err
	}
	out := nse
	if f.maxLife > 0 {
		out.ExpirationTime = timestamppb.New(time.Now().Add(f.maxLife))
	}
	f.last = out
	return out, nil
}

func (f *fakeRegistry) Find(context.Context, *registry.NetworkServiceEndpointQuery, ...grpc.CallOption) (registry.NetworkServiceEndpointRegistry_FindClient, error) {
	return nil, status.Error(codes.Unimplemented, "")
}

func (f *fakeRegistry) Unregister(_ context.Context, nse *registry.NetworkServiceEndpoint, _ ...grpc.CallOption) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "unregister "+nse.GetName())
	return &emptypb.Empty{}, nil
}

func (f *fakeRegistry) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func TestRegistrationRefreshAndUnregister(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistry{maxLife: 3 * time.Minute}
		r := Register(RegistrationOptions{Client: reg, Name: "fwd-1", URL: "unix:///x.sock", Labels: map[string]string{"p2p": "true"}})
		synctest.Wait()
		if n := len(reg.Calls()); n != 1 {
			t.Fatalf("calls after start: %v", reg.Calls())
		}
		got := reg.last
		if got.GetUrl() != "unix:///x.sock" || got.GetNetworkServiceNames()[0] != "forwarder" ||
			got.GetNetworkServiceLabels()["forwarder"].GetLabels()["p2p"] != "true" {
			t.Fatalf("registered %v", got)
		}
		// The registry granted 3 min: refreshed after a third of it, not
		// after a third of the 10 min asked for.
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := len(reg.Calls()); n != 1 {
			t.Fatalf("refreshed too early: %v", reg.Calls())
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := len(reg.Calls()); n != 2 {
			t.Fatalf("not refreshed at a third of the granted lifetime: %v", reg.Calls())
		}
		r.Close()
		calls := reg.Calls()
		if calls[len(calls)-1] != "unregister fwd-1" {
			t.Fatalf("no unregister on Close: %v", calls)
		}
	})
}

func TestRegistrationRetriesUntilRegistryUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistry{failures: 3}
		r := Register(RegistrationOptions{Client: reg, Name: "fwd-1", URL: "unix:///x.sock"})
		time.Sleep(10 * time.Second)
		synctest.Wait()
		calls := reg.Calls()
		if len(calls) != 4 || r.current() == nil {
			t.Fatalf("want 3 failures then success, got %v", calls)
		}
		r.Close()
	})
}

func TestRegistrationStopsOnUnimplemented(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistry{err: status.Error(codes.Unimplemented, "unknown service registry.NetworkServiceEndpointRegistry")}
		r := Register(RegistrationOptions{Client: reg, Name: "fwd-1", URL: "unix:///x.sock"})
		time.Sleep(time.Hour)
		synctest.Wait()
		if calls := reg.Calls(); len(calls) != 1 {
			t.Fatalf("kept calling a next hop without registry: %v", calls)
		}
		r.Close()
		if calls := reg.Calls(); strings.Contains(strings.Join(calls, ","), "unregister") {
			t.Fatalf("unregistered a registration that never happened: %v", calls)
		}
	})
}
