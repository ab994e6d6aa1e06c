package controlplane

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering keeps the control plane free of dataplane libraries: it
// talks to dataplanes only through forwarder.Dataplane.
func TestLayering(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH:", err)
	}
	out, err := exec.CommandContext(t.Context(), goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{"go.fd.io/govpp", "git.fd.io/govpp", "github.com/cilium/ebpf", "github.com/k8snetworkplumbingwg/sriovnet", "github.com/vishvananda/netlink", "github.com/vishvananda/netns"}
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f+"/") {
				t.Errorf("controlplane depends on %s", pkg)
			}
		}
	}
}
