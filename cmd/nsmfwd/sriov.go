package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/internal/envconfig"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/token"
)

// SRIOVConfig is the SR-IOV dataplane's part of the configuration
// (NSM_DATAPLANE=sriov), read from its own NSM_SRIOV_* variables.
type SRIOVConfig struct {
	ConfigFile string `env:"NSM_SRIOV_CONFIG_FILE" default:"/etc/nsmfwd/sriov/config.yaml" desc:"SR-IOV dataplane: YAML file of the PFs, pools and VF ranges (docs/sriov.md)"`
	SysfsRoot  string `env:"NSM_SRIOV_SYSFS_ROOT" default:"/sys" desc:"SR-IOV dataplane: where sysfs is mounted (the host's, showing the host namespace's netdevs)"`
	CgroupRoot string `env:"NSM_SRIOV_CGROUP_ROOT" default:"/sys/fs/cgroup" desc:"SR-IOV dataplane: the host's cgroup mount, which VFIO clients' cgroupDir is relative to"`
	// DevicePluginDir: see devicePluginDir.
	DevicePluginDir string `env:"NSM_SRIOV_DEVICE_PLUGIN_DIR" default:"auto" desc:"SR-IOV dataplane: kubelet's device plugin directory, where a device plugin per SR-IOV token name (<serviceDomain>/<capability>) hands token IDs to pods, for NSM's tokenID parameter; auto: /var/lib/kubelet/device-plugins if it exists, else off; none or empty: off"`
}

// devicePluginDir resolves NSM_SRIOV_DEVICE_PLUGIN_DIR: "" when the
// device plugins are off.
func devicePluginDir(v string) (string, error) {
	switch v {
	case "", "none":
		return "", nil
	case "auto":
		if fi, err := os.Stat(token.DefaultDir); err != nil || !fi.IsDir() {
			return "", nil
		}
		return token.DefaultDir, nil
	}
	fi, err := os.Stat(v)
	if err != nil {
		return "", fmt.Errorf("config: NSM_SRIOV_DEVICE_PLUGIN_DIR: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("config: NSM_SRIOV_DEVICE_PLUGIN_DIR=%q: not a directory", v)
	}
	return v, nil
}

// sriovWithPlugins is the SR-IOV dataplane with the device plugins that
// hand out its token IDs; Close stops the plugins too.
type sriovWithPlugins struct {
	*sriov.Dataplane
	plugins *token.Plugins
}

// Close stops the device plugins and closes the dataplane.
func (s *sriovWithPlugins) Close() error {
	s.plugins.Stop()
	return s.Dataplane.Close()
}

// loadSRIOVConfig reads SRIOVConfig from the environment.
func loadSRIOVConfig() (SRIOVConfig, error) {
	var sc SRIOVConfig
	if err := envconfig.Load(&sc, os.LookupEnv); err != nil {
		return sc, fmt.Errorf("config: %w", err)
	}
	return sc, nil
}

// newSRIOVDataplane builds the SR-IOV dataplane for NSM_DATAPLANE=sriov.
// Its VF records live in <NSM_STATE_DIR>/sriov, with the token IDs of the
// device plugins (NSM_SRIOV_DEVICE_PLUGIN_DIR) when they are on.
func newSRIOVDataplane(ctx context.Context, cfg Config, log *slog.Logger) (forwarder.Dataplane, error) {
	sc, err := loadSRIOVConfig()
	if err != nil {
		return nil, err
	}
	pools, err := sriov.LoadConfig(sc.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("config: NSM_SRIOV_CONFIG_FILE: %w", err)
	}
	pluginDir, err := devicePluginDir(sc.DevicePluginDir)
	if err != nil {
		return nil, err
	}
	opts := sriov.Options{
		Name:       cfg.Name,
		Config:     pools,
		StateDir:   filepath.Join(cfg.StateDir, "sriov"),
		SysfsRoot:  sc.SysfsRoot,
		CgroupRoot: sc.CgroupRoot,
		Logger:     log.With("dataplane", "sriov"),
	}
	var tokens *token.Pool
	if pluginDir != "" {
		counts, err := token.Counts(pools)
		if err != nil {
			return nil, fmt.Errorf("config: NSM_SRIOV_CONFIG_FILE: %w", err)
		}
		if tokens, err = token.Open(opts.StateDir, counts); err != nil {
			return nil, err
		}
		opts.TokenResolver = tokens.Resolve
	}
	dp, err := sriov.New(ctx, opts)
	if err != nil {
		return nil, err
	}
	if tokens == nil {
		return dp, nil
	}
	plugins, err := token.Serve(ctx, token.Options{Dir: pluginDir, Pool: tokens, Logger: log})
	if err != nil {
		_ = dp.Close()
		return nil, err
	}
	log.InfoContext(ctx, "SR-IOV device plugins serving", "dir", pluginDir, "tokens", tokens.Names())
	return &sriovWithPlugins{Dataplane: dp, plugins: plugins}, nil
}

// mechanismRegistry is the mechanism registry for dp: NSM's VFIO joins
// KERNEL when dp is (or holds) the SR-IOV dataplane.
func mechanismRegistry(dp forwarder.Dataplane) *forwarder.Registry {
	r := forwarder.DefaultRegistry()
	if sriovOf(dp) != nil {
		r.Register(sriov.VFIOMechanism())
	}
	return r
}

// registerDataplaneMetrics registers dp's own collectors (the SR-IOV pool
// figures) on reg; nil reg (metrics off) registers nothing.
func registerDataplaneMetrics(reg prometheus.Registerer, dp forwarder.Dataplane) error {
	if reg == nil {
		return nil
	}
	if v, ok := dp.(*vppDataplane); ok {
		if err := reg.Register(v.calls); err != nil {
			return fmt.Errorf("metrics: vpp: %w", err)
		}
		return nil
	}
	s := sriovOf(dp)
	if s == nil {
		return nil
	}
	if err := reg.Register(sriov.NewCollector(s)); err != nil {
		return fmt.Errorf("metrics: sriov: %w", err)
	}
	return nil
}
