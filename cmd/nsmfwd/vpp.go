package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
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
	XDPDir      string        `env:"NSM_VPP_XDP_DIR" default:"" desc:"VPP dataplane: directory, readable by VPP, where nsmfwd writes its XDP programs for VPP's af_xdp (default: NSM_VPP_RUNTIME_DIR/xdp for a local VPP; none for an external one, which then uses its default program)"`
	Buffers     int           `env:"NSM_VPP_BUFFERS" default:"16384" desc:"VPP dataplane: buffers-per-numa of the local VPP (2 KiB each; an AF_XDP interface pins NSM_VPP_AF_XDP_QUEUE of them)"`
	CPUs        string        `env:"NSM_VPP_CPUS" default:"" desc:"VPP dataplane: CPUs dedicated to the local VPP (e.g. 2-3): the first runs its main thread, the others a worker each, interfaces polled; empty: VPP shares the node's CPUs, interfaces in interrupt mode"`
	RxMode      string        `env:"NSM_VPP_RX_MODE" default:"" desc:"VPP dataplane: rx mode of connections' interfaces, interrupt or polling (default: interrupt sharing CPUs, but polling for af_xdp; polling with NSM_VPP_CPUS)"`
	PollSleep   string        `env:"NSM_VPP_POLL_SLEEP_USEC" default:"" desc:"VPP dataplane: poll-sleep-usec of the local VPP's main thread (default 0; 100 for af_xdp sharing CPUs)"`
	Nice        string        `env:"NSM_VPP_NICE" default:"" desc:"VPP dataplane: nice value of the local VPP (default 0)"`
	RxBlock     int           `env:"NSM_VPP_AF_PACKET_RX_BLOCK" default:"8192" desc:"VPP dataplane: bytes per af_packet rx block, 160 blocks per interface; 69632 or more keeps GSO on (10.6 MiB per interface), less turns the workload's TSO off"`
	TxFrames    int           `env:"NSM_VPP_AF_PACKET_TX_FRAMES" default:"128" desc:"VPP dataplane: frames of an af_packet tx ring without GSO (2 KiB each; a GSO ring has 16 of 66 KiB)"`
	XDPQueue    int           `env:"NSM_VPP_AF_XDP_QUEUE" default:"256" desc:"VPP dataplane: AF_XDP rx and tx queue size (power of two, 256 to 32768)"`
	MemifRing   int           `env:"NSM_VPP_MEMIF_RING" default:"256" desc:"VPP dataplane: slots per memif ring (power of two)"`
	MemifBuffer int           `env:"NSM_VPP_MEMIF_BUFFER" default:"2048" desc:"VPP dataplane: bytes per memif slot"`
	TapRing     int           `env:"NSM_VPP_TAP_RING" default:"256" desc:"VPP dataplane: tap v2 rx and tx ring size (power of two)"`
}

// schedule is the local VPP's scheduling: NSM_VPP_CPUS, and the poll
// sleep and nice value it implies unless given.
func (vc VPPConfig) schedule() (vppapi.Schedule, error) {
	cpus, err := vppapi.ParseCPUList(vc.CPUs)
	if err != nil {
		return vppapi.Schedule{}, fmt.Errorf("NSM_VPP_CPUS: %w", err)
	}
	opt := func(name, v string) (*int, error) {
		if v == "" {
			return nil, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: want an integer", name, v)
		}
		return &n, nil
	}
	poll, err := opt("NSM_VPP_POLL_SLEEP_USEC", vc.PollSleep)
	if err != nil {
		return vppapi.Schedule{}, err
	}
	nice, err := opt("NSM_VPP_NICE", vc.Nice)
	if err != nil {
		return vppapi.Schedule{}, err
	}
	s, err := vppapi.PlanSchedule(cpus, poll, nice, vc.RxMode, vc.KernelMode)
	if err != nil {
		return s, fmt.Errorf("VPP scheduling: %w", err)
	}
	return s, nil
}

// rings are the ring sizes of the configuration.
func (vc VPPConfig) rings() vppapi.Rings {
	return vppapi.Rings{AFPacketRxBlock: vc.RxBlock, AFPacketTxFrames: vc.TxFrames, AFXDPQueue: vc.XDPQueue,
		MemifRing: vc.MemifRing, MemifBuffer: vc.MemifBuffer, TapRing: vc.TapRing}
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
	if err := vc.rings().Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if vc.Buffers < 1024 {
		return nil, fmt.Errorf("config: NSM_VPP_BUFFERS=%d: want 1024 or more", vc.Buffers)
	}
	v := &vppDataplane{calls: newVPPCallHistogram()}
	apiSock, statsSock := vc.APISocket, vc.StatsSocket
	// An external VPP's scheduling is its operator's; only the interfaces'
	// rx mode is nsmfwd's, when asked for.
	rxMode := vc.RxMode
	xdpDir := vc.XDPDir
	if apiSock == "" {
		bin, err := vppapi.FindBinary(vc.Bin)
		if err != nil {
			return nil, fmt.Errorf("config: NSM_DATAPLANE=vpp: %w (or set NSM_VPP_API_SOCKET)", err)
		}
		sched, err := vc.schedule()
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		log.InfoContext(ctx, "VPP scheduling", "main_core", sched.MainCore, "workers", sched.Workers,
			"poll_sleep_usec", sched.PollSleepUsec, "nice", sched.Nice, "rx_mode", sched.RxMode)
		rxMode = sched.RxMode
		if xdpDir == "" {
			xdpDir = filepath.Join(vc.RuntimeDir, "xdp")
		}
		if v.proc, err = vppapi.StartProcess(ctx, vppapi.ProcessOptions{
			Bin: bin, RuntimeDir: vc.RuntimeDir, MainHeap: vc.MainHeap, Logger: log, Buffers: vc.Buffers,
			MainCore: sched.MainCore, Workers: sched.Workers, PollSleepUsec: &sched.PollSleepUsec, Nice: sched.Nice,
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
		_, err := vppapi.AttachUplink(ctx, c, vppapi.UplinkOptions{Name: cfg.Name, Mode: vc.Init, Interface: vc.Uplink, XDPDir: xdpDir, Logger: log})
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
	buffers := 0 // unknown for an external VPP
	if v.proc != nil {
		buffers = vc.Buffers
	}
	dp, err := vppapi.New(ctx, vppapi.Options{
		Buffers: buffers, RxMode: rxMode, XDPDir: xdpDir,
		Name: cfg.Name, Conn: conn, KernelMode: vc.KernelMode, MemifDir: vc.MemifDir,
		Stats: vppapi.NewStats(statsSock), Logger: log,
		TunnelIP: tip, VXLANPort: uint16(cfg.VXLANPort), VLANDevices: vlans, Rings: vc.rings(),
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
