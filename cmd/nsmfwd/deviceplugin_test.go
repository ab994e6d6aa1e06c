package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/nsmfwd/nsmfwd/forwarder"
	"github.com/nsmfwd/nsmfwd/sriov"
	"github.com/nsmfwd/nsmfwd/sriov/sriovtest"
	"github.com/nsmfwd/nsmfwd/sriov/token"
)

// TestSRIOVDevicePluginWiring: with NSM_SRIOV_DEVICE_PLUGIN_DIR the
// SR-IOV dataplane serves a device plugin per token name there, resolves
// the token IDs it persisted, and Close stops the plugins.
func TestSRIOVDevicePluginWiring(t *testing.T) {
	root := t.TempDir()
	sriovtest.WriteSysfs(t, root, sriovtest.StandardPF("ens1f0", "ens1f0v"))
	cfgFile := filepath.Join(t.TempDir(), "sriov.yaml")
	if err := os.WriteFile(cfgFile, []byte(`
version: 1
physicalFunctions:
  - name: ens1f0
    pfDriver: ice
    capabilities: [10G]
    serviceDomains: [worker.domain]
    vfs:
      - {range: "0-11", use: kernel, driver: iavf}
      - {range: "12-15", use: vfio, driver: vfio-pci}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	plugins := t.TempDir() // no kubelet.sock: the plugins wait for it
	t.Setenv("NSM_SRIOV_CONFIG_FILE", cfgFile)
	t.Setenv("NSM_SRIOV_SYSFS_ROOT", root)
	t.Setenv("NSM_SRIOV_DEVICE_PLUGIN_DIR", plugins)
	cfg := Config{Name: "fwd", StateDir: t.TempDir()}
	dp, err := newSRIOVDataplane(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = dp.Close()
		}
	}()
	if sriovOf(dp) == nil || sriovOf(newComposite(nil, dp)) == nil {
		t.Fatal("sriovOf does not see the dataplane")
	}
	if _, ok := mechanismRegistry(dp).Lookup(sriov.MechanismVFIO); !ok {
		t.Fatal("VFIO not registered")
	}
	sock := filepath.Join(plugins, token.SocketName("worker.domain/10G"))
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(cfg.StateDir, "sriov", token.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var f struct{ Tokens map[string][]string }
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Tokens["worker.domain/10G"]); n != 16 {
		t.Fatalf("%d tokens", n)
	}
	m := forwarder.Mechanism{Cls: forwarder.ClsLocal, Type: forwarder.MechanismKernel,
		Params: map[string]string{forwarder.ParamNetNSURL: "file:///proc/self/ns/net", forwarder.ParamIfName: "nsm0", sriov.ParamTokenID: f.Tokens["worker.domain/10G"][0]}}
	if err := dp.Check(context.Background(), "c1", forwarder.SideClient, m); err != nil {
		t.Fatalf("token id: %v", err)
	}
	m.Params[sriov.ParamTokenID] = "unknown"
	if err := dp.Check(context.Background(), "c1", forwarder.SideClient, m); forwarder.CodeOf(err) != forwarder.CodeInvalidArgument {
		t.Fatalf("unknown token id: %v", err)
	}
	closed = true
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("plugin socket after Close: %v", err)
	}
}

func TestDevicePluginDir(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for v, want := range map[string]string{"": "", "none": "", dir: dir} {
		if got, err := devicePluginDir(v); err != nil || got != want {
			t.Errorf("%q: %q, %v", v, got, err)
		}
	}
	if got, err := devicePluginDir("auto"); err != nil || (got != "" && got != token.DefaultDir) {
		t.Errorf("auto: %q, %v", got, err)
	}
	for _, v := range []string{filepath.Join(dir, "missing"), file} {
		if _, err := devicePluginDir(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}
