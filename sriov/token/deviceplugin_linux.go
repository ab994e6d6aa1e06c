package token

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	dp "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// DefaultDir is kubelet's device plugin directory.
const DefaultDir = "/var/lib/kubelet/device-plugins"

// DefaultCheckInterval is how often the plugins check that kubelet's and
// their own sockets are still the ones they registered with.
const DefaultCheckInterval = 2 * time.Second

const registerTimeout = 10 * time.Second

// Options configure Serve.
type Options struct {
	// Dir is kubelet's device plugin directory: kubelet.sock is there, and
	// each plugin listens there on nsmfwd-sriov-<name>.sock. Default
	// DefaultDir.
	Dir string
	// Pool gives the token names and their IDs. Required.
	Pool *Pool
	// CheckInterval is how often kubelet.sock and the plugin sockets are
	// checked; a new kubelet.sock (kubelet restarted) or a removed plugin
	// socket makes the plugin listen and register again. Default
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// Logger receives the plugins' logs; nil discards them.
	Logger *slog.Logger
}

// Plugins are the running device plugins, one per token name.
type Plugins struct {
	opts    Options
	log     *slog.Logger
	plugins []*plugin
	cancel  context.CancelFunc
	once    sync.Once
	wg      sync.WaitGroup
}

// plugin serves one token name.
type plugin struct {
	dp.UnimplementedDevicePluginServer

	name string
	sock string // path
	ids  []string
	log  *slog.Logger
	stop chan struct{} // closed by Plugins.Stop

	mu      sync.Mutex
	srv     *grpc.Server
	served  chan struct{} // closed when srv.Serve returned
	sockIno uint64

	registeredWith uint64 // kubelet.sock inode; only the watch goroutine uses it
}

var _ dp.DevicePluginServer = (*plugin)(nil)

var (
	// Kubelet takes an extended resource name "<domain>/<name>": a DNS-1123
	// subdomain and a qualified-name part of at most 63 characters.
	dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	namePartRE     = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	unsafeRE       = regexp.MustCompile(`[^A-Za-z0-9_.-]`)
)

// ValidResourceName reports why kubelet would refuse name as a device
// plugin's resource name, or nil.
func ValidResourceName(name string) error {
	domain, n, ok := strings.Cut(name, "/")
	switch {
	case !ok || strings.Contains(n, "/"):
		return fmt.Errorf("resource name %q: want <domain>/<name> with one '/'", name)
	case len(domain) > 253 || !dnsSubdomainRE.MatchString(domain):
		return fmt.Errorf("resource name %q: domain %q is not a lower-case DNS subdomain", name, domain)
	case domain == "kubernetes.io" || strings.HasSuffix(domain, ".kubernetes.io"):
		return fmt.Errorf("resource name %q: the kubernetes.io domain is reserved", name)
	case len(n) > 63 || !namePartRE.MatchString(n):
		return fmt.Errorf("resource name %q: name %q must be 1-63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric", name, n)
	}
	return nil
}

// SocketName is the file name of name's plugin socket.
func SocketName(name string) string {
	return "nsmfwd-sriov-" + unsafeRE.ReplaceAllString(name, "_") + ".sock"
}

// Serve starts one device plugin per token name of opts.Pool: each
// listens on its socket in opts.Dir and registers with kubelet. A name
// kubelet would refuse is logged and skipped. Kubelet being absent is not
// an error: the plugins register when its socket appears. Stop ends them.
func Serve(ctx context.Context, opts Options) (*Plugins, error) {
	if opts.Pool == nil {
		return nil, errors.New("device plugins: no token pool")
	}
	if opts.Dir == "" {
		opts.Dir = DefaultDir
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = DefaultCheckInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ps := &Plugins{opts: opts, log: log.With("component", "sriov_device_plugin")}
	stop := make(chan struct{})
	for _, name := range opts.Pool.Names() {
		if err := ValidResourceName(name); err != nil {
			ps.log.WarnContext(ctx, "token name not served by a device plugin", "token", name, "error", err)
			continue
		}
		p := &plugin{name: name, sock: filepath.Join(opts.Dir, SocketName(name)), ids: opts.Pool.IDs(name),
			log: ps.log.With("resource", name), stop: stop}
		if err := p.listen(); err != nil {
			ps.stopAll(stop)
			return nil, err
		}
		ps.plugins = append(ps.plugins, p)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ps.cancel = func() { cancel(); close(stop) }
	if _, ok := inode(ps.kubeletSock()); !ok {
		ps.log.InfoContext(ctx, "kubelet socket absent; registering when it appears", "socket", ps.kubeletSock())
	}
	ps.wg.Go(func() { ps.watch(ctx) })
	return ps, nil
}

func (ps *Plugins) kubeletSock() string {
	return filepath.Join(ps.opts.Dir, filepath.Base(dp.KubeletSocket))
}

// watch registers each plugin with the current kubelet.sock (at once, then
// whenever the socket is recreated: kubelet restarted; a failed attempt
// is retried at the next check), and listens again on a plugin socket
// that was removed (as kubelet does at its start) before registering it
// again.
func (ps *Plugins) watch(ctx context.Context) {
	t := time.NewTicker(ps.opts.CheckInterval)
	defer t.Stop()
	for {
		kubeletIno, kubeletUp := inode(ps.kubeletSock())
		for _, p := range ps.plugins {
			if !p.socketIntact() {
				p.log.InfoContext(ctx, "plugin socket gone; listening again", "socket", p.sock)
				if err := p.listen(); err != nil {
					p.log.ErrorContext(ctx, "device plugin listen", "error", err)
					continue
				}
				p.registeredWith = 0
			}
			if kubeletUp && p.registeredWith != kubeletIno && ctx.Err() == nil {
				if err := Register(ctx, ps.kubeletSock(), p.name, filepath.Base(p.sock)); err != nil {
					p.log.ErrorContext(ctx, "device plugin registration", "error", err)
					continue
				}
				p.registeredWith = kubeletIno
				p.log.InfoContext(ctx, "device plugin registered", "socket", p.sock, "devices", len(p.ids))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Register sends kubelet, at its registration socket kubeletSock, the
// registration of the plugin serving resource on endpoint (a socket name
// in kubelet's device plugin directory).
func Register(ctx context.Context, kubeletSock, resource, endpoint string) error {
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+kubeletSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("register %s with kubelet: %w", resource, err)
	}
	defer conn.Close()
	_, err = dp.NewRegistrationClient(conn).Register(ctx, &dp.RegisterRequest{
		Version:      dp.Version,
		Endpoint:     endpoint,
		ResourceName: resource,
		Options:      pluginOptions(),
	})
	if err != nil {
		return fmt.Errorf("register %s with kubelet: %w", resource, err)
	}
	return nil
}

// Stop stops every plugin and removes their sockets.
func (ps *Plugins) Stop() {
	ps.once.Do(func() {
		ps.cancel()
		ps.wg.Wait()
		for _, p := range ps.plugins {
			p.shutdown()
		}
	})
}

func (ps *Plugins) stopAll(stop chan struct{}) {
	close(stop)
	for _, p := range ps.plugins {
		p.shutdown()
	}
}

func inode(path string) (uint64, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ino, true
}

// listen (re)starts p's gRPC server on a fresh socket.
func (p *plugin) listen() error {
	p.shutdown()
	if err := os.Remove(p.sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("device plugin %s: %w", p.name, err)
	}
	lis, err := net.Listen("unix", p.sock)
	if err != nil {
		return fmt.Errorf("device plugin %s: %w", p.name, err)
	}
	ino, _ := inode(p.sock)
	srv := grpc.NewServer()
	dp.RegisterDevicePluginServer(srv, p)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	p.mu.Lock()
	p.srv, p.served, p.sockIno = srv, served, ino
	p.mu.Unlock()
	return nil
}

// socketIntact reports whether p's socket is still the one it listens on.
func (p *plugin) socketIntact() bool {
	ino, ok := inode(p.sock)
	p.mu.Lock()
	defer p.mu.Unlock()
	return ok && ino == p.sockIno
}

// shutdown stops p's server, if any, and removes its socket if still its own.
func (p *plugin) shutdown() {
	p.mu.Lock()
	srv, served := p.srv, p.served
	intact := false
	if srv != nil {
		ino, ok := inode(p.sock)
		intact = ok && ino == p.sockIno
	}
	p.srv, p.served = nil, nil
	p.mu.Unlock()
	if srv == nil {
		return
	}
	// Stop, not GracefulStop: ListAndWatch streams last as long as
	// kubelet's connection.
	srv.Stop()
	<-served
	if intact {
		_ = os.Remove(p.sock)
	}
}

func pluginOptions() *dp.DevicePluginOptions {
	return &dp.DevicePluginOptions{PreStartRequired: false, GetPreferredAllocationAvailable: true}
}

// GetDevicePluginOptions implements dp.DevicePluginServer.
func (p *plugin) GetDevicePluginOptions(context.Context, *dp.Empty) (*dp.DevicePluginOptions, error) {
	return pluginOptions(), nil
}

// ListAndWatch implements dp.DevicePluginServer: every token is a healthy
// device. The IDs of a name do not change while the forwarder runs, so the
// list is sent once and the stream held until kubelet or Stop ends it.
func (p *plugin) ListAndWatch(_ *dp.Empty, s grpc.ServerStreamingServer[dp.ListAndWatchResponse]) error {
	devs := make([]*dp.Device, 0, len(p.ids))
	for _, id := range p.ids {
		devs = append(devs, &dp.Device{ID: id, Health: dp.Healthy})
	}
	if err := s.Send(&dp.ListAndWatchResponse{Devices: devs}); err != nil {
		return fmt.Errorf("list and watch %s: %w", p.name, err)
	}
	select {
	case <-s.Context().Done():
	case <-p.stop:
	}
	return nil
}

// GetPreferredAllocation implements dp.DevicePluginServer: the required
// IDs, then available ones in the pool's order.
func (p *plugin) GetPreferredAllocation(_ context.Context, req *dp.PreferredAllocationRequest) (*dp.PreferredAllocationResponse, error) {
	resp := &dp.PreferredAllocationResponse{}
	for _, cr := range req.GetContainerRequests() {
		size := int(cr.GetAllocationSize())
		ids := slices.Clone(cr.GetMustIncludeDeviceIDs())
		for _, id := range p.ids {
			if len(ids) >= size {
				break
			}
			if slices.Contains(cr.GetAvailableDeviceIDs(), id) && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &dp.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

// Allocate implements dp.DevicePluginServer: each container gets the
// NSM_SRIOV_TOKENS_<name> variable with its IDs.
func (p *plugin) Allocate(_ context.Context, req *dp.AllocateRequest) (*dp.AllocateResponse, error) {
	resp := &dp.AllocateResponse{}
	for _, cr := range req.GetContainerRequests() {
		for _, id := range cr.GetDevicesIds() {
			if !slices.Contains(p.ids, id) {
				return nil, status.Errorf(codes.InvalidArgument, "allocate %s: unknown device %q", p.name, id)
			}
		}
		k, v := ToEnv(p.name, cr.GetDevicesIds())
		resp.ContainerResponses = append(resp.ContainerResponses, &dp.ContainerAllocateResponse{Envs: map[string]string{k: v}})
	}
	return resp, nil
}

// PreStartContainer implements dp.DevicePluginServer; nothing to do (and
// not requested in the options).
func (p *plugin) PreStartContainer(context.Context, *dp.PreStartContainerRequest) (*dp.PreStartContainerResponse, error) {
	return &dp.PreStartContainerResponse{}, nil
}
