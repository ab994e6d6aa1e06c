package validate

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfile checks the image's pins: the Go toolchain image matches
// go.mod's go line (the build sets GOTOOLCHAIN=local) and every FROM names a
// tag, never latest.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile(filepath.Join(repoRoot, "deployments", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	goArg := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindSubmatch(df)
	if goLine == nil || goArg == nil || string(goLine[1]) != string(goArg[1]) {
		t.Errorf("Dockerfile ARG GO_VERSION %q must equal go.mod's go %q", goArg, goLine)
	}
	if !regexp.MustCompile(`(?m)^ARG VPP_VERSION=v25\.10[-.]\S+$`).Match(df) {
		t.Error("Dockerfile: want ARG VPP_VERSION pinned to a VPP 25.10 govpp tag")
	}
	froms := regexp.MustCompile(`(?m)^FROM\s+(?:--platform=\S+\s+)?(\S+)`).FindAllSubmatch(df, -1)
	if len(froms) < 2 {
		t.Fatalf("want a multi-stage build, got %d FROM lines", len(froms))
	}
	for _, f := range froms {
		img := string(f[1])
		last := img[strings.LastIndex(img, "/")+1:]
		if _, tag, ok := strings.Cut(last, ":"); !ok || tag == "" || tag == "latest" {
			t.Errorf("FROM %s: pin a tag", img)
		}
	}
	if !strings.Contains(string(df), "CGO_ENABLED=0") {
		t.Error("Dockerfile: build with CGO_ENABLED=0 (static binaries on the VPP base)")
	}
}
