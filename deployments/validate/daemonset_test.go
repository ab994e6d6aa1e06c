package validate

import (
	"fmt"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// The overlays there must be; each is named after its NSM_DATAPLANE value.
var wantOverlays = []string{"kernel", "vpp", "sriov"}

// pendingNSMVars are announced NSM_* variables not yet in `nsmfwd --help`
// (the metrics work); once they are there this list can go.
var pendingNSMVars = []string{"NSM_PROMETHEUS_LISTEN_ON"}

// otherEnv are the variables without the NSM_ prefix the manifests may set.
var otherEnv = map[string]string{
	"PROMETHEUS":             "enables the /metrics endpoint (as cmd-forwarder-vpp)",
	"SPIFFE_ENDPOINT_SOCKET": "SPIRE agent's Workload API socket (go-spiffe's standard variable)",
	"NODE_NAME":              "the node's name, for $(NODE_NAME) in NSM_NAME",
}

// hostMount is a host directory the forwarder container must see.
type hostMount struct {
	mountPath, hostPath string
	bidirectional       bool
}

var commonMounts = []hostMount{
	{"/var/lib/networkservicemesh", "/var/lib/networkservicemesh", false},
	{"/run/spire/sockets", "/run/spire/sockets", false},
	{"/var/lib/nsmfwd", "/var/lib/nsmfwd", false},
	{"/sys/fs/bpf", "/sys/fs/bpf", true},
}

var overlayMounts = map[string][]hostMount{
	"vpp": {
		{"/var/run/vpp", "/var/run/nsmfwd/vpp", false},
		{"/dev/vfio", "/dev/vfio", false},
	},
	"sriov": {
		{"/dev/vfio", "/dev/vfio", false},
		{"/host/sys/fs/cgroup", "/sys/fs/cgroup", false},
		{"/var/lib/kubelet/pod-resources", "/var/lib/kubelet/pod-resources", false},
		{"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/device-plugins", false},
	},
}

func TestOverlays(t *testing.T) {
	help, err := helpVars()
	if err != nil {
		t.Fatal(err)
	}
	dirs := overlayDirs(t)
	for _, name := range wantOverlays {
		if _, ok := dirs[name]; !ok {
			t.Errorf("overlay %s: missing under deployments/k8s/overlays", name)
		}
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			objs, err := render(dir)
			if err != nil {
				t.Fatal(err)
			}
			kust, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range checkOverlay(name, string(kust), objs, help) {
				t.Error(e)
			}
		})
	}
}

// checkOverlay returns everything wrong with one rendered overlay.
func checkOverlay(overlay, kustomization string, objs []object, help map[string]string) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	var dss []*appsv1.DaemonSet
	for _, o := range objs {
		if ds, ok := o.Obj.(*appsv1.DaemonSet); ok {
			dss = append(dss, ds)
		}
	}
	if len(dss) != 1 {
		fail("want exactly one DaemonSet, got %d", len(dss))
		return errs
	}
	ds := dss[0]
	ns := ds.Namespace
	find := func(kind, name string) bool {
		return slices.ContainsFunc(objs, func(o object) bool {
			return o.GVK.Kind == kind && o.Name == name && o.Namespace == ns
		})
	}
	if ns == "" {
		fail("DaemonSet %s: no namespace", ds.Name)
	}
	spec := ds.Spec.Template.Spec

	// Pod level.
	if !spec.HostNetwork {
		fail("hostNetwork must be true: node-side veth ends live in the host namespace")
	}
	if !spec.HostPID {
		fail("hostPID must be true: client namespaces are found through /proc")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		fail("dnsPolicy %q: want ClusterFirstWithHostNet with hostNetwork", spec.DNSPolicy)
	}
	if sel := ds.Spec.Selector; sel == nil || !labels.SelectorFromSet(sel.MatchLabels).Matches(labels.Set(ds.Spec.Template.Labels)) {
		fail("selector %v does not match the pod template's labels %v", sel, ds.Spec.Template.Labels)
	}
	if spec.ServiceAccountName == "" || !find("ServiceAccount", spec.ServiceAccountName) {
		fail("serviceAccountName %q: no such ServiceAccount in %s", spec.ServiceAccountName, ns)
	}
	if len(spec.InitContainers) > 0 {
		fail("unexpected init containers")
	}
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "nsmfwd" {
		fail("want one container named nsmfwd")
		return errs
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		fail("container must be privileged (netns moves, eBPF, bpffs mount)")
	}

	// Image pinned.
	if err := checkImage(c.Image); err != nil {
		errs = append(errs, err)
	}

	// Resources.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, ok := c.Resources.Requests[r]
		if !ok || req.IsZero() {
			fail("resources.requests.%s not set", r)
		}
		if lim, ok := c.Resources.Limits[r]; ok && req.Cmp(lim) > 0 {
			fail("resources.requests.%s %s exceeds the limit %s", r, req.String(), lim.String())
		}
	}
	if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || lim.IsZero() {
		fail("resources.limits.memory not set")
	}

	// Volumes: every mount has a volume, every volume is mounted.
	vols := make(map[string]corev1.Volume)
	for _, v := range spec.Volumes {
		if _, dup := vols[v.Name]; dup {
			fail("volume %q defined twice", v.Name)
		}
		vols[v.Name] = v
		switch {
		case v.HostPath != nil:
			if v.HostPath.Type == nil || *v.HostPath.Type == "" {
				fail("hostPath volume %q: set type (Directory or DirectoryOrCreate)", v.Name)
			}
		case v.ConfigMap != nil:
			if !find("ConfigMap", v.ConfigMap.Name) {
				fail("volume %q: ConfigMap %q not rendered in namespace %s", v.Name, v.ConfigMap.Name, ns)
			}
		}
	}
	mounted := make(map[string]bool)
	paths := make(map[string]bool)
	for _, m := range c.VolumeMounts {
		if _, ok := vols[m.Name]; !ok {
			fail("volumeMount %q (%s): no volume of that name", m.Name, m.MountPath)
		}
		if paths[m.MountPath] {
			fail("mountPath %s mounted twice", m.MountPath)
		}
		mounted[m.Name], paths[m.MountPath] = true, true
	}
	for name := range vols {
		if !mounted[name] {
			fail("volume %q is never mounted", name)
		}
	}
	// hostMountAt returns the hostPath mount that holds p in the container.
	hostMountAt := func(p string) (corev1.VolumeMount, *corev1.HostPathVolumeSource) {
		var best corev1.VolumeMount
		for _, m := range c.VolumeMounts {
			if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
				best = m
			}
		}
		return best, vols[best.Name].HostPath
	}
	for _, want := range append(slices.Clone(commonMounts), overlayMounts[overlay]...) {
		m, hp := hostMountAt(want.mountPath)
		switch {
		case hp == nil || m.MountPath != want.mountPath:
			fail("no hostPath volume mounted at %s", want.mountPath)
		case hp.Path != want.hostPath:
			fail("%s: hostPath %s, want %s", want.mountPath, hp.Path, want.hostPath)
		case want.bidirectional && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional):
			fail("%s: mountPropagation must be Bidirectional so a bpffs mounted by nsmfwd reaches the host", want.mountPath)
		}
	}

	// Environment.
	env := make(map[string]string)
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			fail("env %s set twice", e.Name)
		}
		for _, ref := range regexp.MustCompile(`\$\(([A-Za-z0-9_]+)\)`).FindAllStringSubmatch(e.Value, -1) {
			if _, ok := env[ref[1]]; !ok {
				fail("env %s refers to $(%s), which is not set before it", e.Name, ref[1])
			}
		}
		env[e.Name] = e.Value
		_, inHelp := help[e.Name]
		_, other := otherEnv[e.Name]
		switch {
		case strings.HasPrefix(e.Name, "NSM_"):
			if !inHelp && !slices.Contains(pendingNSMVars, e.Name) {
				fail("env %s: nsmfwd --help does not know it (typo, or a variable that does not exist yet)", e.Name)
			}
		case !other:
			fail("env %s: neither an NSM_* variable nor one of the known others %v", e.Name, slices.Sorted(maps.Keys(otherEnv)))
		}
	}
	if got := env["NSM_DATAPLANE"]; got != overlay {
		fail("NSM_DATAPLANE=%q in overlay %q: want the overlay's name", got, overlay)
	}
	if !strings.Contains(help["NSM_DATAPLANE"], overlay) && !strings.Contains(firstComment(kustomization), "PENDING") {
		fail("overlay %q: nsmfwd --help does not list dataplane %q yet, so kustomization.yaml must open with a comment saying it is PENDING its issue", overlay, overlay)
	}
	if d := env["NSM_STATE_DIR"]; d == "" {
		fail("NSM_STATE_DIR not set")
	} else if _, hp := hostMountAt(d); hp == nil {
		fail("NSM_STATE_DIR %s is not on a hostPath volume: the connection table must survive the pod", d)
	}
	if d := env["NSM_BPF_PIN_DIR"]; d == "" {
		fail("NSM_BPF_PIN_DIR not set")
	} else if m, hp := hostMountAt(d); hp == nil || hp.Path != "/sys/fs/bpf" || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		fail("NSM_BPF_PIN_DIR %s is not under the host's /sys/fs/bpf mounted Bidirectional", d)
	}
	for _, v := range []string{"NSM_LISTEN_ON", "NSM_CONNECT_TO", "SPIFFE_ENDPOINT_SOCKET"} {
		u, ok := env[v]
		if !ok {
			if v != "SPIFFE_ENDPOINT_SOCKET" {
				fail("%s not set", v)
			}
			continue
		}
		if p, isUnix := strings.CutPrefix(u, "unix://"); isUnix {
			if _, hp := hostMountAt(path.Dir(p)); hp == nil {
				fail("%s %s: socket directory is not a hostPath volume shared with the node", v, u)
			}
		}
	}
	if u := env["NSM_LISTEN_ON"]; u != "" && !strings.HasPrefix(u, "unix://") {
		fail("NSM_LISTEN_ON %s: serve on a unix socket in NSM's socket directory, as NSM's forwarders do (NSMgr reaches it there, and callers can pass namespace descriptors)", u)
	}

	// Probes: exec nsmctl against NSM_LISTEN_ON.
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		sub   []string
	}{
		{"startupProbe", c.StartupProbe, []string{"list", "health"}},
		{"livenessProbe", c.LivenessProbe, []string{"list", "health"}},
		{"readinessProbe", c.ReadinessProbe, []string{"health"}},
	} {
		if err := checkProbe(p.name, p.probe, p.sub, env["NSM_LISTEN_ON"]); err != nil {
			errs = append(errs, err)
		}
	}

	// Metrics.
	if env["PROMETHEUS"] == "true" {
		_, port, err := net.SplitHostPort(env["NSM_PROMETHEUS_LISTEN_ON"])
		if err != nil {
			fail("NSM_PROMETHEUS_LISTEN_ON %q: %v", env["NSM_PROMETHEUS_LISTEN_ON"], err)
		}
		a := ds.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != port || a["prometheus.io/path"] != "/metrics" {
			fail("pod annotations prometheus.io/{scrape,port,path} = %q,%q,%q: want \"true\",%q,\"/metrics\"",
				a["prometheus.io/scrape"], a["prometheus.io/port"], a["prometheus.io/path"], port)
		}
		if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
			return p.Name == "metrics" && fmt.Sprint(p.ContainerPort) == port
		}) {
			fail("no containerPort named metrics on port %s", port)
		}
	}
	return errs
}

func checkImage(image string) error {
	if _, digest, ok := strings.Cut(image, "@"); ok {
		if !strings.HasPrefix(digest, "sha256:") {
			return fmt.Errorf("image %s: bad digest", image)
		}
		return nil
	}
	last := image[strings.LastIndex(image, "/")+1:]
	_, tag, ok := strings.Cut(last, ":")
	if !ok || tag == "" || tag == "latest" {
		return fmt.Errorf("image %q: pin it by tag (not latest) or digest", image)
	}
	return nil
}

// checkProbe wants an exec probe running nsmctl SUB --addr=listenOn.
// --addr must be explicit: nsmctl defaults to $NSM_CONNECT_TO, which in the
// forwarder's container is NSMgr.
func checkProbe(name string, p *corev1.Probe, subs []string, listenOn string) error {
	if p == nil {
		return fmt.Errorf("%s: missing", name)
	}
	if p.Exec == nil || len(p.Exec.Command) < 2 {
		return fmt.Errorf("%s: want an exec probe running nsmctl (the API is on a unix socket)", name)
	}
	cmd := p.Exec.Command
	if path.Base(cmd[0]) != "nsmctl" || !slices.Contains(subs, cmd[1]) {
		return fmt.Errorf("%s: command %q: want nsmctl %s", name, cmd, strings.Join(subs, " or "))
	}
	if !slices.Contains(cmd, "--addr="+listenOn) {
		return fmt.Errorf("%s: command %q lacks --addr=%s (NSM_LISTEN_ON)", name, cmd, listenOn)
	}
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	if p.TimeoutSeconds == 0 {
		timeout = time.Second
	}
	for _, a := range cmd {
		if v, ok := strings.CutPrefix(a, "--timeout="); ok {
			d, err := time.ParseDuration(v)
			if err != nil || d >= timeout {
				return fmt.Errorf("%s: nsmctl %s must be shorter than timeoutSeconds (%s)", name, a, timeout)
			}
		}
	}
	return nil
}

// firstComment is the comment block a file opens with.
func firstComment(s string) string {
	var b strings.Builder
	for l := range strings.SplitSeq(s, "\n") {
		if !strings.HasPrefix(l, "#") {
			break
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}
