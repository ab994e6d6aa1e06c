package validate

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// metrics are the names nsmfwd exports (docs/metrics.md) with their labels.
// Histograms are queried through their _bucket, _sum and _count series.
var metrics = map[string]struct {
	histogram bool
	labels    []string
}{
	"nsmfwd_connection_packets_total":      {false, []string{"conn_id", "network_service", "client_interface", "endpoint_interface", "direction"}},
	"nsmfwd_connection_bytes_total":        {false, []string{"conn_id", "network_service", "client_interface", "endpoint_interface", "direction"}},
	"nsmfwd_connection_drops_total":        {false, []string{"conn_id", "network_service", "client_interface", "endpoint_interface", "direction"}},
	"nsmfwd_request_duration_seconds":      {true, []string{"mechanism", "outcome", "kind"}},
	"nsmfwd_close_duration_seconds":        {true, []string{"mechanism", "outcome", "reason"}},
	"nsmfwd_connections":                   {false, []string{"dataplane"}},
	"nsmfwd_dataplane_ready":               {false, []string{"dataplane"}},
	"nsmfwd_connections_reaped_total":      {false, []string{"reason"}},
	"nsmfwd_vpp_api_call_duration_seconds": {true, []string{"message"}},
	"nsmfwd_sriov_vfs":                     {false, []string{"pool", "use", "state"}},
}

// targetLabels are added by Prometheus' scrape, not by nsmfwd.
var targetLabels = []string{"instance", "job", "namespace", "pod", "node"}

// promqlWords are PromQL's functions, aggregations and keywords: every other
// identifier in an expression is a metric name.
var promqlWords = strings.Fields(`sum min max avg count stddev stdvar topk bottomk quantile count_values group
	rate irate increase delta idelta deriv predict_linear resets changes histogram_quantile
	abs ceil floor round clamp clamp_min clamp_max exp ln log2 log10 sqrt sgn
	absent absent_over_time present_over_time scalar vector time timestamp label_replace label_join sort sort_desc
	avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time quantile_over_time
	by without on ignoring group_left group_right bool and or unless offset inf nan`)

var (
	reString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	reMatchers = regexp.MustCompile(`\{([^}]*)\}`)
	reGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	reRange    = regexp.MustCompile(`\[[^\]]*\]`)
	reVar      = regexp.MustCompile(`\$\{?[A-Za-z0-9_]+\}?`)
	reIdent    = regexp.MustCompile(`(^|[^A-Za-z0-9_.:])([A-Za-z_:][A-Za-z0-9_:]*)`)
	reLabel    = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// exprMetrics returns the metric names a PromQL expression reads and checks
// each name, and each label it groups or matches by, against metrics.
func exprMetrics(expr string) ([]string, error) {
	e := reVar.ReplaceAllString(expr, "")
	var errs []string
	checkLabel := func(l string) {
		l = strings.TrimSpace(l)
		if l == "" || l == "le" || l == "__name__" || slices.Contains(targetLabels, l) {
			return
		}
		for _, m := range metrics {
			if slices.Contains(m.labels, l) {
				return
			}
		}
		errs = append(errs, fmt.Sprintf("label %q is on no nsmfwd metric", l))
	}
	for _, m := range reMatchers.FindAllStringSubmatch(reString.ReplaceAllString(e, `""`), -1) {
		for _, l := range reLabel.FindAllStringSubmatch(m[1], -1) {
			checkLabel(l[1])
		}
	}
	e = reString.ReplaceAllString(e, "")
	e = reMatchers.ReplaceAllString(e, "")
	for _, g := range reGrouping.FindAllStringSubmatch(e, -1) {
		for l := range strings.SplitSeq(g[1], ",") {
			checkLabel(l)
		}
	}
	e = reGrouping.ReplaceAllString(e, "")
	e = reRange.ReplaceAllString(e, "")
	var names []string
	for _, m := range reIdent.FindAllStringSubmatch(e, -1) {
		id := m[2]
		if slices.Contains(promqlWords, strings.ToLower(id)) {
			continue
		}
		names = append(names, id)
		if !knownSeries(id) {
			errs = append(errs, fmt.Sprintf("%q is not an nsmfwd metric (docs/metrics.md)", id))
		}
	}
	if len(names) == 0 {
		errs = append(errs, "reads no metric")
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %s", expr, strings.Join(errs, "; "))
	}
	return names, nil
}

func knownSeries(name string) bool {
	if m, ok := metrics[name]; ok {
		return !m.histogram
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if m, ok := metrics[base]; ok && m.histogram {
				return true
			}
		}
	}
	return false
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         *int        `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func TestDashboards(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(repoRoot, "deployments", "grafana", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards under deployments/grafana (%v)", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range checkDashboard(data) {
				t.Error(e)
			}
		})
	}
}

func checkDashboard(data []byte) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !json.Valid(data) {
		return []error{fmt.Errorf("not valid JSON")}
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return []error{err}
	}
	if d.UID == "" || d.Title == "" {
		fail("dashboard needs a uid and a title")
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			dsVar = v.Name
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				if err := json.Unmarshal(v.Query, &q.Query); err != nil {
					fail("variable %s: query: %v", v.Name, err)
				}
			}
			m := regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				fail("variable %s: query %q: want label_values(METRIC, LABEL)", v.Name, q.Query)
			} else if _, err := exprMetrics(m[1] + " by (" + m[2] + ")"); err != nil {
				fail("variable %s: %v", v.Name, err)
			}
		}
	}
	if dsVar == "" {
		fail("no datasource variable in templating")
	}
	usesVar := func(ds *datasource) bool {
		return ds != nil && (ds.UID == "${"+dsVar+"}" || ds.UID == "$"+dsVar)
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" && !usesVar(v.Datasource) {
			fail("variable %s: datasource must be the $%s variable", v.Name, dsVar)
		}
	}
	ids := make(map[int]string)
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			switch {
			case p.ID == nil:
				fail("panel %q has no id", p.Title)
			case ids[*p.ID] != "":
				fail("panel id %d used by %q and %q", *p.ID, ids[*p.ID], p.Title)
			default:
				ids[*p.ID] = p.Title
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Title == "" {
				fail("panel %d has no title", *p.ID)
			}
			if !usesVar(p.Datasource) {
				fail("panel %q: datasource must be the $%s variable", p.Title, dsVar)
			}
			if len(p.Targets) == 0 {
				fail("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != nil && !usesVar(tg.Datasource) {
					fail("panel %q: target datasource must be the $%s variable", p.Title, dsVar)
				}
				if _, err := exprMetrics(tg.Expr); err != nil {
					fail("panel %q: %v", p.Title, err)
				}
			}
		}
	}
	walk(d.Panels)
	return errs
}

func TestDashboardCheckRejects(t *testing.T) {
	for _, bad := range []string{
		`sum(rate(nsmfwd_connection_packet_total[5m]))`,           // misspelt metric
		`rate(nsmfwd_request_duration_seconds[5m])`,               // histogram without suffix
		`sum by (conn) (rate(nsmfwd_connection_bytes_total[5m]))`, // unknown label
		`up`,                                    // not ours
		`nsmfwd_connections{dataplan="kernel"}`, // unknown matcher label
	} {
		if _, err := exprMetrics(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	for _, good := range []string{
		`histogram_quantile(0.99, sum by (le, mechanism) (rate(nsmfwd_request_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`,
		`8 * sum by (conn_id) (rate(nsmfwd_connection_bytes_total[5m])) > 0`,
	} {
		if _, err := exprMetrics(good); err != nil {
			t.Errorf("rejected: %v", err)
		}
	}
	dup := `{"uid":"u","title":"t","templating":{"list":[{"name":"ds","type":"datasource"}]},"panels":[
		{"id":1,"type":"stat","title":"a","datasource":{"uid":"${ds}"},"targets":[{"expr":"nsmfwd_connections"}]},
		{"id":1,"type":"stat","title":"b","datasource":{"uid":"${ds}"},"targets":[{"expr":"nsmfwd_connections"}]}]}`
	if errs := checkDashboard([]byte(dup)); len(errs) != 1 || !strings.Contains(errs[0].Error(), "panel id 1") {
		t.Errorf("duplicate panel id: got %v", errs)
	}
	if errs := checkDashboard([]byte(`{"panels": [`)); len(errs) == 0 {
		t.Error("invalid JSON accepted")
	}
}
