// Command nsmctl talks to nsmfwd (or any NSM forwarder) the way an NSM
// client does: it requests, refreshes and closes KERNEL connections and
// lists or streams the forwarder's connections with their counters.
//
//	nsmctl connect --service icmp --netns /run/netns/client --ifname nsm0
//	nsmctl list
//	nsmctl close --id ID
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"

	"google.golang.org/grpc/status"
)

const defaultAddr = "unix:///var/lib/networkservicemesh/nsmfwd.sock"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// env is what a subcommand gets from its process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

type command struct {
	name    string
	summary string
	// parse reads the subcommand's flags; it returns a runnable or an error
	// (flag.ErrHelp when help was asked for).
	parse func(fs *flag.FlagSet, e env, args []string) (runner, error)
}

type runner interface {
	run(ctx context.Context, e env) error
}

var commands = []command{
	{"connect", "request a KERNEL connection and print its id, interface and addresses", parseConnect},
	{"refresh", "refresh a connection (found by id through the monitor) so it does not expire", parseRefresh},
	{"close", "close a connection, found by id through the monitor", parseClose},
	{"list", "list the forwarder's connections with their counters", parseList},
	{"monitor", "stream the forwarder's connection events", parseMonitor},
	{"health", "check the forwarder's grpc health (exit 0 when SERVING); for exec probes", parseHealth},
}

// usageError marks bad command lines: exit status 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	e := env{stdout: stdout, stderr: stderr, getenv: getenv}
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			usage(stdout)
			return 0
		}
		name, rest = rest[0], []string{"-h"}
	}
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		fmt.Fprintf(stderr, "nsmctl: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	cmd := commands[i]
	fs := flag.NewFlagSet("nsmctl "+cmd.name, flag.ContinueOnError)
	// Flag errors are reported below, once, with the command's name.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	r, err := cmd.parse(fs, e, rest)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stdout)
		fmt.Fprintf(stdout, "nsmctl %s: %s\n\nFlags:\n", cmd.name, cmd.summary)
		fs.PrintDefaults()
		return 0
	}
	if err == nil {
		err = r.run(ctx, e)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "nsmctl %s: %s\n", cmd.name, describe(err))
	if _, ok := errors.AsType[usageError](err); ok {
		fmt.Fprintf(stderr, "Run 'nsmctl help %s' for its flags.\n", cmd.name)
		return 2
	}
	return 1
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "nsmctl talks to an NSM forwarder as an NSM client does.\n\nUsage: nsmctl COMMAND [flags]\n\nCommands:\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	fmt.Fprintf(tw, "  help\tthis list; help COMMAND shows a command's flags\n")
	_ = tw.Flush()
	fmt.Fprintf(w, "\nThe forwarder address is --addr, else $NSM_CONNECT_TO, else %s.\n", defaultAddr)
}

// describe renders err; a gRPC status anywhere in the chain is shown as
// "Code: message" followed by the wrapping context.
func describe(err error) string {
	type grpcStatus interface{ GRPCStatus() *status.Status }
	var gs grpcStatus
	if !errors.As(err, &gs) {
		return err.Error()
	}
	st := gs.GRPCStatus()
	op := strings.TrimSuffix(strings.TrimSuffix(err.Error(), st.Err().Error()), ": ")
	if op == "" || op == err.Error() {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return fmt.Sprintf("%s: %s: %s", op, st.Code(), st.Message())
}

// grpcTarget turns a forwarder URL into a gRPC dial target:
// unix:///path stays, tcp://host:port and host:port become passthrough.
func grpcTarget(addr string) (string, error) {
	u, err := url.Parse(addr)
	if err == nil && u.Scheme == "unix" {
		if u.Path == "" && u.Opaque == "" {
			return "", usagef("--addr %q: unix URL without a path", addr)
		}
		return addr, nil
	}
	if err == nil && u.Scheme == "tcp" {
		if u.Host == "" {
			return "", usagef("--addr %q: tcp URL without host:port", addr)
		}
		return "passthrough:///" + u.Host, nil
	}
	if !strings.Contains(addr, "://") && strings.Contains(addr, ":") {
		return "passthrough:///" + addr, nil
	}
	return "", usagef("--addr %q: want unix:///PATH, tcp://HOST:PORT or HOST:PORT", addr)
}
