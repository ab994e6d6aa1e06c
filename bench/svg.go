package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Colours of the plotted series, in order.
var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"}

type svg struct{ b strings.Builder }

func newSVG(w, h int) *svg {
	s := &svg{}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&s.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return s
}

func (s *svg) text(x, y float64, anchor, text string, extra ...string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s"%s>%s</text>`+"\n", x, y, anchor, attrs(extra), html.EscapeString(text))
}

func (s *svg) line(x1, y1, x2, y2 float64, stroke string, extra ...string) {
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"%s/>`+"\n", x1, y1, x2, y2, stroke, attrs(extra))
}

func (s *svg) rect(x, y, w, h float64, fill string) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, w, h, fill)
}

func (s *svg) end(w io.Writer) error {
	s.b.WriteString("</svg>\n")
	_, err := io.WriteString(w, s.b.String())
	return err
}

func attrs(extra []string) string {
	if len(extra) == 0 {
		return ""
	}
	return " " + strings.Join(extra, " ")
}

// niceMax rounds v up to 1, 2, 2.5 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// ThroughputSVG plots, for every dataplane row, the throughput figures as
// horizontal bars (median) with min–max whiskers; rows that were not
// measured carry their status instead.
func (r *Results) ThroughputSVG(w io.Writer) error {
	metrics := []Metric{}
	for _, m := range DataplaneMetrics {
		if m.HigherIsBetter {
			metrics = append(metrics, m)
		}
	}
	const (
		labelW, panelW, gap = 280.0, 220.0, 20.0
		top, rowH, bottom   = 62.0, 26.0, 40.0
	)
	rows := r.Dataplanes
	width := labelW + float64(len(metrics))*(panelW+gap)
	height := top + float64(len(rows))*rowH + bottom
	s := newSVG(int(width), int(height))
	s.text(width/2, 20, "middle", "Throughput by dataplane (median, whiskers min–max over rounds)", `font-weight="bold"`)
	for i, d := range rows {
		y := top + float64(i)*rowH + rowH/2
		s.text(labelW-8, y+4, "end", d.Title)
	}
	for mi, m := range metrics {
		x0 := labelW + float64(mi)*(panelW+gap)
		maxV := 0.0
		for _, d := range rows {
			if st, ok := d.Metrics[m.Key]; ok {
				maxV = math.Max(maxV, st.Max)
			}
		}
		maxV = niceMax(maxV)
		s.text(x0+panelW/2, top-18, "middle", fmt.Sprintf("%s (%s)", m.Title, m.Unit))
		yAxis := top + float64(len(rows))*rowH
		s.line(x0, top-6, x0, yAxis, "#333")
		s.line(x0, yAxis, x0+panelW, yAxis, "#333")
		for t := 0; t <= 4; t++ {
			v := maxV * float64(t) / 4
			x := x0 + panelW*float64(t)/4
			s.line(x, yAxis, x, yAxis+4, "#333")
			s.text(x, yAxis+16, "middle", trimFloat(v), `font-size="10"`)
			if t > 0 {
				s.line(x, top-6, x, yAxis, "#ddd")
			}
		}
		for i, d := range rows {
			y := top + float64(i)*rowH
			st, ok := d.Metrics[m.Key]
			if !ok || !st.Valid() {
				s.text(x0+6, y+rowH/2+4, "start", d.Status, `fill="#888"`, `font-style="italic"`)
				continue
			}
			bw := panelW * st.Median / maxV
			s.rect(x0, y+5, bw, rowH-10, palette[mi%len(palette)])
			lo, hi := x0+panelW*st.Min/maxV, x0+panelW*st.Max/maxV
			cy := y + rowH/2
			s.line(lo, cy, hi, cy, "#000")
			s.line(lo, cy-4, lo, cy+4, "#000")
			s.line(hi, cy-4, hi, cy+4, "#000")
			label := trimFloat(st.Median)
			if rt, ok := d.Ratios[m.Key]; ok && d.Key != ReferenceKey {
				label += fmt.Sprintf(" ×%.2f", rt.Median)
			}
			s.text(math.Min(hi+4, x0+panelW-2), cy-7, "start", label, `font-size="10"`)
		}
	}
	return s.end(w)
}

// SetupLatencySVG plots the control-plane setup latency (p50 and p99, one
// Request at a time) and the build p99 against the number of live
// connections on a logarithmic axis, with min–max whiskers.
func (r *Results) SetupLatencySVG(w io.Writer) error {
	const (
		width, height            = 700.0, 380.0
		left, right, top, bottom = 60.0, 230.0, 40.0, 50.0
	)
	s := newSVG(int(width), int(height))
	s.text((width-right+left)/2, 20, "middle", "Connection setup latency against live connections", `font-weight="bold"`)
	cp := r.ControlPlane
	if cp == nil || len(cp.Levels) == 0 {
		s.text(width/2, height/2, "middle", "control-plane series not measured", `fill="#888"`)
		return s.end(w)
	}
	series := []struct {
		name string
		get  func(CPLevel) Stat
	}{
		{"setup p50", func(l CPLevel) Stat { return l.SetupP50 }},
		{"setup p99", func(l CPLevel) Stat { return l.SetupP99 }},
		{"build p99 (concurrent)", func(l CPLevel) Stat { return l.BuildP99 }},
		{"close p99 (concurrent)", func(l CPLevel) Stat { return l.CloseP99 }},
	}
	maxY, maxX := 0.0, 1.0
	for _, l := range cp.Levels {
		maxX = math.Max(maxX, float64(l.Live))
		for _, se := range series {
			maxY = math.Max(maxY, se.get(l).Max)
		}
	}
	maxY = niceMax(maxY)
	decades := math.Max(1, math.Ceil(math.Log10(maxX)))
	pw, ph := width-left-right, height-top-bottom
	px := func(n float64) float64 { return left + pw*math.Log10(math.Max(n, 1))/decades }
	py := func(v float64) float64 { return top + ph*(1-v/maxY) }
	s.line(left, top, left, top+ph, "#333")
	s.line(left, top+ph, left+pw, top+ph, "#333")
	for d := 0.0; d <= decades; d++ {
		x := px(math.Pow(10, d))
		s.line(x, top+ph, x, top+ph+4, "#333")
		s.line(x, top, x, top+ph, "#eee")
		s.text(x, top+ph+16, "middle", trimFloat(math.Pow(10, d)), `font-size="10"`)
	}
	for t := 0; t <= 5; t++ {
		v := maxY * float64(t) / 5
		y := py(v)
		s.line(left-4, y, left, y, "#333")
		s.line(left, y, left+pw, y, "#eee")
		s.text(left-6, y+3, "end", trimFloat(v), `font-size="10"`)
	}
	s.text(left+pw/2, height-12, "middle", "live connections (log scale)")
	s.text(16, top+ph/2, "middle", "ms", fmt.Sprintf(`transform="rotate(-90 16 %.1f)"`, top+ph/2))
	for _, tgt := range []struct {
		v    float64
		name string
	}{{10, "target p50 10 ms"}, {50, "target p99 50 ms"}} {
		if tgt.v <= maxY {
			s.line(left, py(tgt.v), left+pw, py(tgt.v), "#999", `stroke-dasharray="4 3"`)
			s.text(left+pw-2, py(tgt.v)-3, "end", tgt.name, `font-size="10"`, `fill="#666"`)
		}
	}
	for i, se := range series {
		c := palette[i%len(palette)]
		var pts []string
		for _, l := range cp.Levels {
			st := se.get(l)
			if !st.Valid() {
				continue
			}
			x := px(float64(l.Live))
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, py(st.Median)))
			s.line(x, py(st.Min), x, py(st.Max), c)
			fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", x, py(st.Median), c)
		}
		if len(pts) > 1 {
			fmt.Fprintf(&s.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), c)
		}
		ly := top + 10 + float64(i)*18
		s.line(left+pw+14, ly, left+pw+34, ly, c, `stroke-width="2"`)
		s.text(left+pw+38, ly+4, "start", se.name)
	}
	return s.end(w)
}

func trimFloat(v float64) string {
	switch {
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}
