package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestOptions(t *testing.T) {
	o, err := options(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if o.Quick || o.Rounds != 3 || !slices.Equal(o.CP.Levels, []int{1, 10, 100, 1000}) {
		t.Fatalf("defaults: %+v", o)
	}
	o, err = options(env(map[string]string{"BENCH_QUICK": "1", "BENCH_CP_LEVELS": "2, 20", "BENCH_SECONDS": "3", "BENCH_NOTE": "busy"}))
	if err != nil {
		t.Fatal(err)
	}
	if !o.Quick || o.Rounds != 1 || o.Traffic.Seconds != 3 || !slices.Equal(o.CP.Levels, []int{2, 20}) || o.Note != "busy" {
		t.Fatalf("quick with overrides: %+v", o)
	}
	for _, bad := range []map[string]string{{"BENCH_ROUNDS": "0"}, {"BENCH_CP_LEVELS": "1,x"}, {"BENCH_CP_PROBES": "-2"}} {
		if _, err := options(env(bad)); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}

func TestHelp(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), []string{"-h"}, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(stderr.String(), "BENCH_QUICK") {
		t.Fatalf("-h: %v\n%s", err, stderr.String())
	}
}

func TestRender(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.json")
	if err := os.WriteFile(in, []byte(`{"schema":1,"dataplanes":[{"key":"reference","title":"ref","status":"skipped","reason":"x"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run(t.Context(), []string{"render", "-in", in, "-out", dir}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || !strings.Contains(string(md), "| ref | skipped: x |") {
		t.Fatalf("results.md: %v\n%s", err, md)
	}
}
