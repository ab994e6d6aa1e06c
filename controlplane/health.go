package controlplane

import (
	"context"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthServices are the names whose status the Server keeps: the whole
// server ("") and the services it implements.
var healthServices = []string{
	"",
	"networkservice.NetworkService",
	"connection.MonitorConnection",
}

func (s *Server) setHealth(serving bool) {
	if s.health == nil {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range healthServices {
		s.health.SetServingStatus(name, st)
	}
}

// checkHealth asks the dataplane (periodically, whether or not a health
// server is configured: the readiness metric uses the answer too) whether it can build vWires and publishes
// the answer. A failure is logged only when the status changes.
func (s *Server) checkHealth(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, s.healthInt)
	defer cancel()
	err := s.dp.Ready(ctx)
	s.setHealth(err == nil)
	state := int32(1)
	if err != nil {
		state = 2
	}
	if old := s.ready.Swap(state); old == state {
		return
	}
	if err != nil {
		s.log.WarnContext(ctx, "dataplane not ready", "error", err)
	} else {
		s.log.InfoContext(ctx, "dataplane ready")
	}
}

func (s *Server) healthLoop() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.bgDone:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(s.healthInt)
	defer t.Stop()
	for {
		select {
		case <-s.bgDone:
			return
		case <-t.C:
			s.checkHealth(ctx)
		}
	}
}
