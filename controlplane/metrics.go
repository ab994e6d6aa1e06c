package controlplane

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nsmfwd/nsmfwd/forwarder"
)

// Label values of the control-plane metrics.
const (
	outcomeOK    = "ok"
	outcomeError = "error"

	kindNew     = "new"
	kindRefresh = "refresh"

	// Close reasons.
	reasonClose  = "close"
	reasonExpiry = "expiry"

	// mechanismInvalid labels requests whose mechanism type is not one we
	// know, so a caller cannot blow up label cardinality.
	mechanismInvalid = "invalid"
)

// scrapeTimeout bounds the dataplane reads of one scrape.
const scrapeTimeout = 5 * time.Second

// metrics are the Server's Prometheus metrics. Per-connection counters are
// not stored here: they are read from the dataplane at scrape time, so they
// are live and vanish with the connection.
type metrics struct {
	requestDuration *prometheus.HistogramVec
	closeDuration   *prometheus.HistogramVec
	reaped          *prometheus.CounterVec
}

// latencyBuckets span 100 µs to ~13 s: a refresh is sub-millisecond, a new
// vWire a few milliseconds, a slow next hop seconds.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 18)

func newMetrics(s *Server, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nsmfwd_request_duration_seconds",
			Help:    "Duration of NSM Requests served by the forwarder, next hop included.",
			Buckets: latencyBuckets,
		}, []string{"mechanism", "outcome", "kind"}),
		closeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nsmfwd_close_duration_seconds",
			Help:    "Duration of connection teardowns, next hop Close included, by reason (close, expiry, reaped).",
			Buckets: latencyBuckets,
		}, []string{"mechanism", "outcome", "reason"}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsmfwd_connections_reaped_total",
			Help: "Connections torn down because their client or endpoint side died, by reason.",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requestDuration, m.closeDuration, m.reaped, &liveCollector{s: s}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observeRequest(mechanism, kind string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.requestDuration.WithLabelValues(mechanism, outcome(err), kind).Observe(time.Since(start).Seconds())
}

func (m *metrics) observeClose(mechanism, reason string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.closeDuration.WithLabelValues(mechanism, outcome(err), reason).Observe(time.Since(start).Seconds())
}

func outcome(err error) string {
	if err != nil {
		return outcomeError
	}
	return outcomeOK
}

// mechanismLabel returns typ when the registry knows it, else "invalid".
func (s *Server) mechanismLabel(typ string) string {
	if _, ok := s.reg.Lookup(typ); ok {
		return typ
	}
	return mechanismInvalid
}

// liveCollector reports what is true at scrape time: the connections held,
// dataplane readiness and each connection's datapath counters.
type liveCollector struct{ s *Server }

var (
	connLabels = []string{"conn_id", "network_service", "client_interface", "endpoint_interface", "direction"}

	descPackets = prometheus.NewDesc("nsmfwd_connection_packets_total",
		"Packets forwarded on a connection's vWire; direction rx is what the forwarder received from the client, tx what it sent to the client.",
		connLabels, nil)
	descBytes = prometheus.NewDesc("nsmfwd_connection_bytes_total",
		"Bytes forwarded on a connection's vWire, by direction (rx: from the client, tx: to the client).",
		connLabels, nil)
	descDrops = prometheus.NewDesc("nsmfwd_connection_drops_total",
		"Packets dropped by the datapath of a connection, by direction (rx: from the client, tx: to the client).",
		connLabels, nil)
	descConns = prometheus.NewDesc("nsmfwd_connections",
		"Connections the forwarder holds.", []string{"dataplane"}, nil)
	descReady = prometheus.NewDesc("nsmfwd_dataplane_ready",
		"1 when the dataplane can build vWires, 0 when not (the grpc health status follows it).", []string{"dataplane"}, nil)
)

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descDrops, descConns, descReady} {
		ch <- d
	}
}

type connInfo struct {
	id, service, clientIf, endpointIf string
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	s.mu.Lock()
	conns := make([]connInfo, 0, len(s.conns))
	for id, e := range s.conns {
		conns = append(conns, connInfo{
			id:         id,
			service:    e.fc.NetworkService,
			clientIf:   e.fc.Client.Mechanism.Param(forwarder.ParamIfName),
			endpointIf: e.fc.Endpoint.Mechanism.Param(forwarder.ParamIfName),
		})
	}
	s.mu.Unlock()

	dp := s.dp.Name()
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(len(conns)), dp)
	ready := 0.0
	if s.ready.Load() == 1 {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, ready, dp)

	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	for _, ci := range conns {
		st, err := s.dp.Stats(ctx, ci.id)
		if err != nil {
			continue // closed since the snapshot, or not readable: no sample
		}
		for _, d := range []struct {
			dir string
			c   forwarder.Counters
		}{{"rx", st.ClientToEndpoint}, {"tx", st.EndpointToClient}} {
			lv := []string{ci.id, ci.service, ci.clientIf, ci.endpointIf, d.dir}
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(d.c.Packets), lv...)
			ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(d.c.Bytes), lv...)
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(d.c.Drops), lv...)
		}
	}
}
