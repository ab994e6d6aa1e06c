package main

import (
	"context"
	"flag"
	"fmt"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nsmfwd/nsmfwd/controlplane/nsc"
)

// healthCmd asks the forwarder's grpc health service, for exec probes:
// Kubernetes' native grpc probes need TCP, and the forwarder serves NSMgr
// on a unix socket.
type healthCmd struct {
	common
	Service string
}

func parseHealth(fs *flag.FlagSet, e env, args []string) (runner, error) {
	c := &healthCmd{}
	c.register(fs, e, false)
	fs.StringVar(&c.Service, "service", "", `health service name ("" is the whole server)`)
	if err := c.check(fs, args); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *healthCmd) run(ctx context.Context, e env) error {
	cc, ctx, done, err := c.session(ctx, nsc.DefaultTokenLifetime)
	if err != nil {
		return err
	}
	defer done()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: c.Service})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", resp.GetStatus())
	}
	fmt.Fprintln(e.stdout, resp.GetStatus())
	return nil
}
