package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/envconfig"
	"github.com/nsmfwd/nsmfwd/vppapi"
)

// VPPConfig is the VPP dataplane's part of the configuration
// (NSM_DATAPLANE=vpp), read from its own variables.
type VPPConfig struct {
	Bin         string        `env:"VPP_BIN" default:"" desc:"VPP dataplane: vpp binary to start and supervise (default: vpp on PATH); unused with NSM_VPP_API_SOCKET"`
	APISocket   string        `env:"NSM_VPP_API_SOCKET" default:"" desc:"VPP dataplane: binary-API socket of an external VPP; empty starts a local one in NSM_VPP_RUNTIME_DIR"`
	StatsSocket string        `env:"NSM_VPP_STATS_SOCKET" default:"" desc:"VPP dataplane: stats socket (default: the local VPP's, or stats.sock beside NSM_VPP_API_SOCKET)"`
	RuntimeDir  string        `env:"NSM_VPP_RUNTIME_DIR" default:"/run/nsmfwd/vpp" desc:"VPP dataplane: runtime directory of the local VPP (startup.conf, sockets, log, pid)"`
	KernelMode  string        `env:"NSM_VPP_KERNEL_MODE" default:"af_packet" desc:"VPP dataplane: how KERNEL interfaces reach VPP: af_packet or af_xdp (veth) or tap"`
	MemifDir    string        `env:"NSM_VPP_MEMIF_DIR" default:"/run/nsmfwd/memif" desc:"VPP dataplane: directory of the per-connection memif socket directories"`
	CallTimeout time.Duration `env:"NSM_VPP_CALL_TIMEOUT" default:"10s" desc:"VPP dataplane: timeout of one binary-API call"`
	MainHeap    string        `env:"NSM_VPP_MAIN_HEAP" default:"256M" desc:"VPP dataplane: main-heap size of the local VPP"`
	Init        string        `env:"NSM_VPP_INIT" default:"NONE" desc:"VPP dataplane: attach the host uplink to VPP: AF_PACKET, AF_XDP or NONE (its MAC, MTU, addresses and routes are copied)"`
	Uplink      string        `env:"NSM_VPP_UPLINK_INTERFACE" default:"" desc:"VPP dataplane: uplink for NSM_VPP_INIT (default: the interface of the default route)"`
}

// vppDataplane is the VPP dataplane with what serves it: the supervised
// local VPP (nil for an external one), the supervisor and the binary-API
// call histogram.
type vppDataplane struct {
	*vppapi.Dataplane
	proc   *vppapi.Process
	calls  *prometheus.HistogramVec
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newVPPCallHistogram is the histogram of binary-API round trips.
func newVPPCallHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "nsmfwd_vpp_api_call_duration_seconds",
		Help:    "Duration of VPP binary-API calls, by message and result.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
	}, []string{"message", "result"})
}

// newVPPDataplane builds the VPP dataplane for NSM_DATAPLANE=vpp: it starts
// (or adopts) a local VPP, or connects to an external one, and supervises
// it, replaying every live connection after VPP restarts.
func newVPPDataplane(ctx context.Context, cfg Config, log *slog.Logger) (forwarder.Dataplane, error) {
	var vc VPPConfig
	if err := envconfig.Load(&vc, os.LookupEnv); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	log = log.With("dataplane", "vpp")
	v := &vppDataplane{calls: newVPPCallHistogram()}
	apiSock, statsSock := vc.APISocket, vc.StatsSocket
	if apiSock == "" {
		bin, err := vppapi.FindBinary(vc.Bin)
		if err != nil {
			return nil, fmt.Errorf("config: NSM_DATAPLANE=vpp: %w (or set NSM_VPP_API_SOCKET)", err)
		}
		if v.proc, err = vppapi.StartProcess(ctx, vppapi.ProcessOptions{
			Bin: bin, RuntimeDir: vc.RuntimeDir, MainHeap: vc.MainHeap, MainCore: -1, Logger: log,
		}); err != nil {
			return nil, err
		}
		apiSock = v.proc.APISocket()
		if statsSock == "" {
			statsSock = v.proc.StatsSocket()
		}
	} else if statsSock == "" {
		statsSock = filepath.Join(filepath.Dir(apiSock), "stats.sock")
	}
	dial := func(ctx context.Context) (*vppapi.Conn, error) {
		return vppapi.Dial(ctx, vppapi.ConnOptions{
			Socket: apiSock, CallTimeout: vc.CallTimeout, Logger: log,
			Observe: func(msg string, d time.Duration, err error) {
				result := "ok"
				if err != nil {
					result = "error"
				}
				v.calls.WithLabelValues(msg, result).Observe(d.Seconds())
			},
		})
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := dial(dctx)
	cancel()
	if err != nil {
		return nil, err
	}
	setup := func(ctx context.Context, c *vppapi.Conn) error {
		_, err := vppapi.AttachUplink(ctx, c, vppapi.UplinkOptions{Name: cfg.Name, Mode: vc.Init, Interface: vc.Uplink, Logger: log})
		return err
	}
	if err := setup(ctx, conn); err != nil {
		conn.Close()
		return nil, err
	}
	// Tunnels leave by the uplink, so they need the uplink in VPP.
	tip, vlans, err := remoteOptions(ctx, cfg, log, vc.Init != vppapi.UplinkNone)
	if err != nil {
		conn.Close()
		return nil, err
	}
	dp, err := vppapi.New(ctx, vppapi.Options{
		Name: cfg.Name, Conn: conn, KernelMode: vc.KernelMode, MemifDir: vc.MemifDir,
		Stats: vppapi.NewStats(statsSock), Logger: log,
		TunnelIP: tip, VXLANPort: uint16(cfg.VXLANPort), VLANDevices: vlans,
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	v.Dataplane = dp
	sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
	v.cancel = scancel
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		err := vppapi.Supervise(sctx, vppapi.SuperviseOptions{Process: v.proc, Dial: dial, Setup: setup, Dataplane: dp, Logger: log})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("VPP supervisor stopped", "error", err)
		}
	}()
	log.InfoContext(ctx, "VPP connected", "version", conn.Version(), "api_socket", apiSock, "kernel_mode", vc.KernelMode)
	return v, nil
}

// Close stops supervising VPP and releases the connection. VPP keeps
// running with every vWire; the next start adopts it.
func (v *vppDataplane) Close() error {
	v.cancel()
	v.wg.Wait()
	if c := v.Conn(); c != nil {
		c.Close()
	}
	return v.Dataplane.Close()
}
