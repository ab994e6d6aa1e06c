// Command nsmbench is nsmfwd's benchmark harness (make bench). Run as root
// from the repository root after make build:
//
//	nsmbench [-bin ./bin] [-out bench/results]
//
// BENCH_QUICK=1 runs every row briefly (CI). The subcommands ping and pong
// are the UDP latency generator the harness runs inside namespaces;
// render -in results.json -out DIR re-renders the tables and plots;
// compare OLD NEW compares two runs (exit status 3 on a regression).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nsmfwd/nsmfwd/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "nsmbench:", err)
		if re := (*bench.RegressionError)(nil); errors.As(err, &re) {
			os.Exit(re.ExitCode())
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "ping":
			return ping(ctx, args[1:], stdout)
		case "pong":
			fs := flag.NewFlagSet("pong", flag.ContinueOnError)
			addr := fs.String("addr", ":7007", "UDP address to echo on")
			if err := fs.Parse(args[1:]); err != nil {
				return err
			}
			return bench.Pong(ctx, *addr)
		case "render":
			return render(args[1:], stderr)
		case "compare":
			return compare(args[1:], stdout, stderr)
		}
	}
	return harness(ctx, args, stderr)
}

func ping(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	var o bench.PingOptions
	fs.StringVar(&o.Addr, "addr", "", "pong server host:port")
	fs.IntVar(&o.Count, "count", 1000, "round trips to measure")
	fs.DurationVar(&o.Interval, "interval", time.Millisecond, "pause between round trips")
	if err := fs.Parse(args); err != nil {
		return err
	}
	r, err := bench.Ping(ctx, o)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(r)
}

// render rewrites the Markdown, benchstat text and plots from a
// results.json, e.g. after a change to the rendering.
func render(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "bench/results/results.json", "results.json to read")
	out := fs.String("out", "bench/results", "directory to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*in)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	defer f.Close()
	r, err := bench.ReadJSON(f)
	if err != nil {
		return err
	}
	return r.WriteFiles(*out)
}

// envOverrides lists the BENCH_* variables that change the defaults.
const envHelp = `Environment:
  BENCH_QUICK=1            every row briefly (CI; not for numbers)
  BENCH_ROUNDS             traffic rounds after the warm-up (default 3, quick 1)
  BENCH_SECONDS            seconds per iperf3 test (default 5, quick 1)
  BENCH_CP_LEVELS          live connection counts, comma-separated (default 1,10,100,1000; quick 1,10,50)
  BENCH_CP_ROUNDS          control-plane rounds after the warm-up (default 3, quick 1)
  BENCH_CP_LARGEST_ROUNDS  rounds of the largest level (default 2: it takes most of the budget)
  BENCH_CP_PROBES          one-at-a-time Requests per level (default 50, quick 5)
  BENCH_CP_CONCURRENCY     Requests/Closes in flight while building up/tearing down (default 4)
  BENCH_NOTE               free text recorded with the host (e.g. other load on the machine)
  VPP_BIN                  VPP binary for the VPP rows (else vpp in PATH)
`

func harness(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("nsmbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("bin", "bin", "directory holding nsmfwd and nse (make build)")
	out := fs.String("out", "bench/results", "directory for results.json, results.md, results.bench.txt and the plots")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: nsmbench [flags]   (as root; make bench)\n")
		fs.PrintDefaults()
		fmt.Fprint(stderr, envHelp)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	o, err := options(os.Getenv)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("own executable: %w", err)
	}
	binDir, err := filepath.Abs(*bin)
	if err != nil {
		return fmt.Errorf("bin dir: %w", err)
	}
	for _, b := range []string{"nsmfwd", "nse"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("%s not built (make build): %w", b, err)
		}
	}
	// Pin the traffic generators to the first two CPUs this process may
	// run on (both to the same one on a single-core machine).
	cpus, err := bench.AllowedCPUs()
	if err != nil {
		return err
	}
	e, err := bench.NewEnv(log, binDir, self)
	if err != nil {
		return err
	}
	e.ClientCPU, e.ServerCPU = bench.PlaceGenerators(cpus)
	log.InfoContext(ctx, "nsmbench", "quick", o.Quick, "cpus", len(cpus), "allowed_cpus", fmt.Sprint(cpus), "client_cpu", e.ClientCPU, "server_cpu", e.ServerCPU, "tmp", e.Dir)

	r := func() *bench.Results {
		defer func() {
			if cerr := e.Cleanup(); cerr != nil {
				log.WarnContext(ctx, "cleanup", "err", cerr)
			}
		}()
		return bench.Run(ctx, e, o)
	}()
	if err := r.WriteFiles(*out); err != nil {
		return err
	}
	log.InfoContext(ctx, "results written", "dir", *out, "seconds", int(r.Seconds))
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	var failed []string
	for _, d := range r.Dataplanes {
		if d.Status == bench.StatusFailed {
			failed = append(failed, d.Key+": "+d.Reason)
		}
	}
	if r.ControlPlane != nil && r.ControlPlane.Status == bench.StatusFailed {
		failed = append(failed, "control plane: "+r.ControlPlane.Reason)
	}
	if r.VPPSmall != nil && r.VPPSmall.Status == bench.StatusFailed {
		failed = append(failed, "VPP small node: "+r.VPPSmall.Reason)
	}
	if len(failed) > 0 {
		return errors.New("failed rows:\n  " + strings.Join(failed, "\n  "))
	}
	return nil
}

// options returns the defaults changed by the BENCH_* variables.
func options(getenv func(string) string) (bench.Options, error) {
	o := bench.DefaultOptions(getenv("BENCH_QUICK") == "1")
	o.Note = getenv("BENCH_NOTE")
	ints := []struct {
		name string
		p    *int
	}{
		{"BENCH_ROUNDS", &o.Rounds}, {"BENCH_SECONDS", &o.Traffic.Seconds},
		{"BENCH_CP_ROUNDS", &o.CP.Rounds}, {"BENCH_CP_LARGEST_ROUNDS", &o.CP.MaxLevelRounds}, {"BENCH_CP_PROBES", &o.CP.Probes},
		{"BENCH_CP_CONCURRENCY", &o.CP.Concurrency},
	}
	for _, v := range ints {
		if s := getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return o, fmt.Errorf("%s=%q: want a positive integer", v.name, s)
			}
			*v.p = n
		}
	}
	if s := getenv("BENCH_CP_LEVELS"); s != "" {
		var levels []int
		for f := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return o, fmt.Errorf("BENCH_CP_LEVELS=%q: want positive integers", s)
			}
			levels = append(levels, n)
		}
		o.CP.Levels = levels
	}
	return o, nil
}
