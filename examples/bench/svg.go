package main

import (
	"fmt"
	"html"
	"math"
	"strings"
	"time"
)

// renderSVG draws every side's latency distribution as nested bars on a
// logarithmic axis: p99 (light), p90, p50 (dark); plain grpc-go in grey-blue,
// grpcreuse in green. Scenarios are grouped under a heading.
func renderSVG(dists []dist) string {
	const (
		labelW, plotW, rowH, headH, top, pad = 330, 560, 18, 22, 56, 12
		width                                = labelW + plotW + 2*pad + 60
	)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, d := range dists {
		for _, v := range []time.Duration{d.p50, d.p99} {
			if v > 0 {
				lo = math.Min(lo, float64(v))
				hi = math.Max(hi, float64(v))
			}
		}
	}
	if len(dists) == 0 || math.IsInf(lo, 1) {
		lo, hi = float64(time.Microsecond), float64(time.Second)
	}
	// Whole decades around the data.
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	if hi <= lo {
		hi = lo * 10
	}
	x := func(d time.Duration) float64 {
		v := math.Max(float64(d), lo)
		return labelW + pad + plotW*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	rows := 0
	prev := ""
	for _, d := range dists {
		if d.scenario != prev {
			rows++ // heading
			prev = d.scenario
		}
		rows++
	}
	height := top + rows*rowH + len(dists)/2 + 60

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">grpcreuse vs plain grpc-go: latency per side (p50 / p90 / p99, log scale)</text>`+"\n", pad)
	// Legend.
	legend := []struct{ fill, text string }{
		{"#9aa7b8", "plain grpc-go p99"}, {"#5f7590", "p90"}, {"#2c3e57", "p50"},
		{"#a9dba9", "grpcreuse p99"}, {"#5cb85c", "p90"}, {"#2e7d32", "p50"},
	}
	lx := pad
	for _, l := range legend {
		fmt.Fprintf(&b, `<rect x="%d" y="30" width="12" height="10" fill="%s"/><text x="%d" y="39">%s</text>`+"\n", lx, l.fill, lx+16, l.text)
		lx += 22 + 7*len(l.text)
	}
	// Decade grid.
	axisBottom := top + rows*rowH
	for v := lo; v <= hi*1.0001; v *= 10 {
		d := time.Duration(v)
		gx := x(d)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", gx, top-6, gx, axisBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", gx, axisBottom+14, html.EscapeString(axisLabel(d)))
	}
	y := top
	prev = ""
	for _, d := range dists {
		if d.scenario != prev {
			fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", pad, y+rowH-5, html.EscapeString(d.scenario))
			y += rowH
			prev = d.scenario
		}
		colors := [3]string{"#9aa7b8", "#5f7590", "#2c3e57"}
		if d.toolkit {
			colors = [3]string{"#a9dba9", "#5cb85c", "#2e7d32"}
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", pad+10, y+rowH-5, html.EscapeString(d.side))
		x0 := float64(labelW + pad)
		for i, v := range []time.Duration{d.p99, d.p90, d.p50} {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n",
				x0, y+3, math.Max(1, x(v)-x0), rowH-6, colors[i],
				html.EscapeString(fmt.Sprintf("%s %s: p50 %v, p90 %v, p99 %v (%d samples)", d.scenario, d.side, d.p50, d.p90, d.p99, d.n)))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#333">%s</text>`+"\n", x(d.p99)+4, y+rowH-5, html.EscapeString(fmtMS(ms(d.p99))))
		y += rowH
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func axisLabel(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%gs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%gms", float64(d)/float64(time.Millisecond))
	case d >= time.Microsecond:
		return fmt.Sprintf("%gµs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%dns", d)
}
