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
)

// SRIOVConfig is the SR-IOV dataplane's part of the configuration
// (NSM_DATAPLANE=sriov), read from its own NSM_SRIOV_* variables.
type SRIOVConfig struct {
	ConfigFile string `env:"NSM_SRIOV_CONFIG_FILE" default:"/etc/nsmfwd/sriov/config.yaml" desc:"SR-IOV dataplane: YAML file of the PFs, pools and VF ranges (docs/sriov.md)"`
	SysfsRoot  string `env:"NSM_SRIOV_SYSFS_ROOT" default:"/sys" desc:"SR-IOV dataplane: where sysfs is mounted (the host's, showing the host namespace's netdevs)"`
	CgroupRoot string `env:"NSM_SRIOV_CGROUP_ROOT" default:"/sys/fs/cgroup" desc:"SR-IOV dataplane: the host's cgroup mount, which VFIO clients' cgroupDir is relative to"`
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
// Its VF records live in <NSM_STATE_DIR>/sriov.
func newSRIOVDataplane(ctx context.Context, cfg Config, log *slog.Logger) (forwarder.Dataplane, error) {
	sc, err := loadSRIOVConfig()
	if err != nil {
		return nil, err
	}
	pools, err := sriov.LoadConfig(sc.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("config: NSM_SRIOV_CONFIG_FILE: %w", err)
	}
	return sriov.New(ctx, sriov.Options{
		Name:       cfg.Name,
		Config:     pools,
		StateDir:   filepath.Join(cfg.StateDir, "sriov"),
		SysfsRoot:  sc.SysfsRoot,
		CgroupRoot: sc.CgroupRoot,
		Logger:     log.With("dataplane", "sriov"),
	})
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
