package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
)

// TestSRIOVWiring builds the SR-IOV dataplane from NSM_SRIOV_* variables
// on a fake sysfs tree, as NSM_DATAPLANE=sriov does.
func TestSRIOVWiring(t *testing.T) {
	root := t.TempDir()
	sriovtest.WriteSysfs(t, root, sriovtest.StandardPF("ens1f0", "ens1f0v"))
	cfgFile := filepath.Join(t.TempDir(), "sriov.yaml")
	if err := os.WriteFile(cfgFile, []byte(`
version: 1
physicalFunctions:
  - name: ens1f0
    pfDriver: ice
    capabilities: [10G]
    serviceDomains: [a]
    vfs:
      - {range: "0-11", use: kernel, driver: iavf}
      - {range: "12-15", use: vfio, driver: vfio-pci}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NSM_SRIOV_CONFIG_FILE", cfgFile)
	t.Setenv("NSM_SRIOV_SYSFS_ROOT", root)
	t.Setenv("NSM_SRIOV_DEVICE_PLUGIN_DIR", "none")
	cfg := Config{Name: "fwd", StateDir: t.TempDir()}
	dp, err := newSRIOVDataplane(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if dp.Name() != "sriov" {
		t.Fatalf("dataplane %q", dp.Name())
	}
	if _, ok := mechanismRegistry(dp).Lookup(sriov.MechanismVFIO); !ok {
		t.Fatal("VFIO not registered for the sriov dataplane")
	}
	if _, ok := mechanismRegistry(nil).Lookup(sriov.MechanismVFIO); ok {
		t.Fatal("VFIO registered for another dataplane")
	}
	if _, ok := mechanismRegistry(nil).Lookup(forwarder.MechanismKernel); !ok {
		t.Fatal("KERNEL missing")
	}
	reg := prometheus.NewRegistry()
	if err := registerDataplaneMetrics(reg, dp); err != nil {
		t.Fatal(err)
	}
	if err := registerDataplaneMetrics(nil, dp); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) == 0 {
		t.Fatalf("gathered %d families: %v", len(mfs), err)
	}

	t.Run("kernel+sriov", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: the kernel dataplane mounts bpffs")
		}
		pin := filepath.Join("/sys/fs/bpf", "nsmfwd-test-composite-"+strconv.Itoa(os.Getpid()))
		t.Cleanup(func() { _ = os.RemoveAll(pin) })
		kc := cfg
		kc.BPFPinDir, kc.TCAttach = pin, "auto"
		dp, err := newCompositeDataplane(context.Background(), kc, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer dp.Close()
		if dp.Name() != "kernel+sriov" || sriovOf(dp) == nil {
			t.Fatalf("dataplane %q", dp.Name())
		}
		if _, ok := mechanismRegistry(dp).Lookup(sriov.MechanismVFIO); !ok {
			t.Fatal("VFIO not registered for kernel+sriov")
		}
	})

	t.Setenv("NSM_SRIOV_CONFIG_FILE", filepath.Join(root, "missing.yaml"))
	if _, err := newSRIOVDataplane(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("missing config file accepted")
	}
}
