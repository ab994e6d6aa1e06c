package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nsmfwd/nsmfwd/bench"
)

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	write := func(name, ratio string) string {
		p := filepath.Join(dir, name)
		js := `{"schema":1,"host":{"cpus":2},"dataplanes":[` +
			`{"key":"reference","status":"measured","metrics":{"udp64_mpps":{"n":1,"median":0.3,"min":0.3,"max":0.3,"runs":[0.3]}}},` +
			`{"key":"kernel-ebpf","status":"measured","ratios":{"udp64_mpps":{"n":1,"median":` + ratio + `,"min":` + ratio + `,"max":` + ratio + `,"runs":[` + ratio + `]}}}]}`
		if err := os.WriteFile(p, []byte(js), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	old, same, worse := write("old.json", "1.2"), write("same.json", "1.2"), write("worse.json", "0.9")

	var out bytes.Buffer
	if err := run(t.Context(), []string{"compare", old, same}, &out, &bytes.Buffer{}); err != nil {
		t.Fatalf("same: %v", err)
	}
	out.Reset()
	err := run(t.Context(), []string{"compare", "-threshold", "10", old, worse}, &out, &bytes.Buffer{})
	var re *bench.RegressionError
	if !errors.As(err, &re) || re.ExitCode() != 3 || !strings.Contains(out.String(), "**regression**") {
		t.Fatalf("worse: %v\n%s", err, out.String())
	}
	// A threshold above the change: no regression.
	if err := run(t.Context(), []string{"compare", "-threshold", "30", old, worse}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatalf("threshold 30: %v", err)
	}
	if err := run(t.Context(), []string{"compare", old}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Fatal("one argument: want an error")
	}
}
