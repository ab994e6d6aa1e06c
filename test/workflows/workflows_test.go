package workflows

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	yaml "go.yaml.in/yaml/v2"
)

// root is the repository root, relative to this package.
var root = filepath.Join("..", "..")

// workflow is the part of a workflow file the tests read.
type workflow struct {
	Env  map[string]any `yaml:"env"`
	Jobs map[string]job `yaml:"jobs"`
}

type job struct {
	Env   map[string]any `yaml:"env"`
	Steps []step         `yaml:"steps"`
}

type step struct {
	Name string         `yaml:"name"`
	Uses string         `yaml:"uses"`
	Run  string         `yaml:"run"`
	With map[string]any `yaml:"with"`
	Env  map[string]any `yaml:"env"`
}

func readWorkflow(t *testing.T, name string) workflow {
	t.Helper()
	path := filepath.Join(root, ".github", "workflows", name)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var w workflow
	if err := yaml.Unmarshal(b, &w); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if len(w.Jobs) == 0 {
		t.Fatalf("%s: no jobs", path)
	}
	return w
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

// steps returns every step of every job, in a stable order.
func (w workflow) steps() []step {
	names := make([]string, 0, len(w.Jobs))
	for n := range w.Jobs {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []step
	for _, n := range names {
		out = append(out, w.Jobs[n].Steps...)
	}
	return out
}

var binapiVPP = regexp.MustCompile(`(?m)^//\s+VPP:\s+(\S+)\s*$`)

// govppBinapiVPP returns the VPP release that the binapi of the govpp
// version in go.mod was generated from, read from the header of a
// generated file ("//  VPP:              25.10-release"), and where.
func govppBinapiVPP(t *testing.T) (version, file string) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), "go", "list", "-f", "{{.Dir}}", "go.fd.io/govpp/binapi/vpe").CombinedOutput()
	if err != nil {
		t.Fatalf("go list go.fd.io/govpp/binapi/vpe (is go.fd.io/govpp still in go.mod?): %v\n%s", err, out)
	}
	file = filepath.Join(strings.TrimSpace(string(out)), "vpe.ba.go")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := binapiVPP.FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no \"// VPP: <version>\" line in the generated header", file)
	}
	return string(m[1]), file
}

// TestBenchVPPMatchesGovppBinapi: the VPP that bench.yml installs from
// FD.io must be the release govpp's binapi was generated for, or message
// CRCs disagree and the VPP dataplane fails to connect on the runner.
func TestBenchVPPMatchesGovppBinapi(t *testing.T) {
	w := readWorkflow(t, "bench.yml")
	installed := str(w.Env["VPP_VERSION"])
	if installed == "" {
		t.Fatal("bench.yml: no workflow-level env VPP_VERSION (the FD.io package version it installs)")
	}
	binapi, file := govppBinapiVPP(t)
	if installed != binapi {
		t.Fatalf("VPP version drift: .github/workflows/bench.yml installs VPP %q from FD.io, "+
			"but go.fd.io/govpp's binapi was generated for VPP %q (%s).\n"+
			"Set VPP_VERSION in bench.yml to %q (FD.io's release repository names packages X.Y-release), "+
			"or move go.fd.io/govpp to a version generated for %q.", installed, binapi, file, binapi, installed)
	}
	// The install step must use the variable, not a version of its own.
	var install string
	for _, s := range w.steps() {
		if strings.Contains(s.Run, "apt-get install") && strings.Contains(s.Run, "vpp") {
			install = s.Run
		}
	}
	if install == "" {
		t.Fatal("bench.yml: no step installs vpp with apt-get")
	}
	for _, pkg := range []string{"vpp", "vpp-plugin-core", "libvppinfra"} {
		if !strings.Contains(install, `"`+pkg+`=${VPP_VERSION}"`) {
			t.Errorf("bench.yml: the install step does not pin %s to ${VPP_VERSION} (want \"%s=${VPP_VERSION}\")", pkg, pkg)
		}
	}
	if got := str(w.Env["VPP_BIN"]); got != "/usr/bin/vpp" {
		t.Errorf("bench.yml: VPP_BIN = %q, want FD.io's packaged /usr/bin/vpp", got)
	}
}

var goDirective = regexp.MustCompile(`(?m)^go\s+(\S+)\s*$`)
var toolchainDirective = regexp.MustCompile(`(?m)^toolchain\s+go(\S+)\s*$`)

// TestWorkflowsUseModuleGo: every actions/setup-go step installs go.mod's
// Go, either from go.mod itself or as the same version.
func TestWorkflowsUseModuleGo(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := goDirective.FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod: no go directive")
	}
	want := string(m[1])
	// setup-go prefers the toolchain directive when there is one.
	if tc := toolchainDirective.FindSubmatch(b); tc != nil && string(tc[1]) != want {
		t.Fatalf("go.mod: toolchain go%s differs from go %s; setup-go with go-version-file would install go%s", tc[1], want, tc[1])
	}
	files, err := filepath.Glob(filepath.Join(root, ".github", "workflows", "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no workflows: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		n := 0
		for _, s := range readWorkflow(t, name).steps() {
			if !strings.HasPrefix(s.Uses, "actions/setup-go@") {
				continue
			}
			n++
			file, version := str(s.With["go-version-file"]), str(s.With["go-version"])
			switch {
			case file == "go.mod" && version == "":
			case file == "" && version == want:
			default:
				t.Errorf("%s: setup-go with go-version-file %q, go-version %q; want go-version-file: go.mod (go %s)", name, file, version, want)
			}
		}
		if n == 0 && (name == "ci.yml" || name == "bench.yml") {
			t.Errorf("%s: no actions/setup-go step", name)
		}
	}
}

var ciRunPkgs = regexp.MustCompile(`(?m)^pkgs=\(([^)]*)\)`)

// TestCIPackagesMatchCIRun: ci.yml installs what .ci/run installs.
func TestCIPackagesMatchCIRun(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	m := ciRunPkgs.FindSubmatch(b)
	if m == nil {
		t.Fatal(".ci/run: no pkgs=(...) line")
	}
	want := strings.Fields(string(m[1]))
	got := strings.Fields(str(readWorkflow(t, "ci.yml").Env["APT_PACKAGES"]))
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("ci.yml env APT_PACKAGES = %q, .ci/run pkgs = %q: keep them the same", got, want)
	}
}

var pinned = regexp.MustCompile(`^[\w.-]+/[\w./-]+@[0-9a-f]{40}$`)

// TestActionsPinned: third-party code runs with the job's token, so every
// action is pinned to a commit (with the tag in a comment), not to a
// movable tag.
func TestActionsPinned(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(root, ".github", "workflows", "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		for _, s := range readWorkflow(t, filepath.Base(f)).steps() {
			if s.Uses != "" && !strings.HasPrefix(s.Uses, "./") && !pinned.MatchString(s.Uses) {
				t.Errorf("%s: %q is not pinned to a full commit SHA", filepath.Base(f), s.Uses)
			}
		}
	}
}

var (
	dockerfileVPP = regexp.MustCompile(`(?m)^ARG VPP_VERSION=v(\d+\.\d+)\S*$`)
	vppRelease    = regexp.MustCompile(`^(\d+\.\d+)`)
)

// TestImageVPPMatchesGovppBinapi: the image's VPP base (deployments/
// Dockerfile) is of the same VPP release as govpp's binapi, like the VPP
// the bench workflow installs. The base's tag may be a later build of the
// release branch, so only the release (25.10) is compared.
func TestImageVPPMatchesGovppBinapi(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "deployments", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := dockerfileVPP.FindSubmatch(b)
	if m == nil {
		t.Fatal("deployments/Dockerfile: no ARG VPP_VERSION=vX.Y... line")
	}
	binapi, file := govppBinapiVPP(t)
	rel := vppRelease.FindString(binapi)
	if string(m[1]) != rel {
		t.Fatalf("VPP version drift: deployments/Dockerfile builds on VPP %s, go.fd.io/govpp's binapi is for VPP %q (%s)", m[1], binapi, file)
	}
}
