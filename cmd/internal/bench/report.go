package bench

import (
	"cmp"
	"fmt"
	"html"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/podvisor/podvisor/shared/bytesize"
)

// Command is the command line that reproduces r (without --chart or -o).
func (r *Result) Command() string {
	s := fmt.Sprintf("podvisor bench --pods %d --hosts %d", r.Setup.Pods, r.Setup.Hosts)
	if r.Pipeline.Rate > 0 {
		s += fmt.Sprintf(" --rate %g", r.Pipeline.Rate)
	}
	return s
}

// Table prints the side-by-side figures and the ratios.
func (r *Result) Table(w io.Writer) error {
	fmt.Fprintf(w, "%s: %d pods on %d hosts (%d clusters × %d), %d CPUs, %s, %.0fs in all\n\n",
		r.Command(), r.Setup.Pods, r.Setup.Hosts, r.Setup.Clusters, r.Setup.HostsPerCluster, r.Setup.CPUs, r.Setup.GoVersion, r.Setup.Seconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\tRATE\tLATENCY p50 / p95 / p99\tDONE")
	applied := "burst"
	if r.Pipeline.Rate > 0 {
		applied = fmt.Sprintf("at %g pods/s", r.Pipeline.Rate)
	}
	fmt.Fprintf(tw, "pipeline (podvisor, %s)\t%.1f pods/s\t%.0f / %.0f / %.0f ms\t%d of %d VM running in %.1fs\n", applied,
		r.Pipeline.PodsPerS, r.Pipeline.LatencyMS.P50, r.Pipeline.LatencyMS.P95, r.Pipeline.LatencyMS.P99,
		r.Pipeline.VMRunning, r.Pipeline.Pods, r.Pipeline.Seconds)
	if r.Pipeline.AttachedPerS > 0 {
		fmt.Fprintf(tw, "  network attach (network-config)\t%.1f pods/s\t\t\n", r.Pipeline.AttachedPerS)
	}
	fmt.Fprintf(tw, "raw govmomi (best: %d workers)\t%.1f VMs/s\t\t%d VMs\n", r.Raw.Workers, r.Raw.VMsPerS, r.Raw.VMs)
	fmt.Fprintf(tw, "sequential (create, power on)\t%.1f VMs/s\t\t%d VMs in %.1fs\n", r.Sequential.VMsPerS, r.Sequential.VMs, r.Sequential.Seconds)
	fmt.Fprintf(tw, "scheduling only (framework)\t%.0f pods/s\t\t%d of %d placed on %d hosts\n", r.Scheduling.PodsPerS, r.Scheduling.Placed, r.Scheduling.Pods, r.Scheduling.Hosts)
	q := r.QEMUFork
	measured := q != nil && q.Skipped == ""
	if measured {
		fmt.Fprintf(tw, "boot image booted (QEMU TCG)\t\t%.0f / %.0f / %.0f ms\t%s: power-on → container running\n",
			q.Boot.P50, q.Boot.P95, q.Boot.P99, count(q.Pairs, "template", "templates"))
		fmt.Fprintf(tw, "boot image forked (QEMU TCG)\t\t%.0f / %.0f / %.0f ms\t%s: fork → container running (QEMU's save and restore p50 %.0f ms)\n",
			q.Fork.P50, q.Fork.P95, q.Fork.P99, count(q.Pairs, "child", "children"), q.SaveRestore.P50)
	}
	fmt.Fprintln(tw, "\t\t\t")
	fmt.Fprintf(tw, "pipeline / raw\t%s\t\t\n", ratio(r.Ratios.PipelineToRaw))
	fmt.Fprintf(tw, "pipeline / sequential\t%s\t\t\n", ratio(r.Ratios.PipelineToSequential))
	if measured {
		fmt.Fprintf(tw, "booted / forked (boot image, p50)\t%s\t\t(target ≥ 3×)\n", ratio(q.Ratio))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var tries []string
	for _, t := range r.Raw.Tries {
		tries = append(tries, fmt.Sprintf("%d workers %.1f/s", t.Workers, t.VMsPerS))
	}
	fmt.Fprintf(w, "\nraw tries: %s\n", strings.Join(tries, ", "))
	fmt.Fprintf(w, "vSphere calls per pod: pipeline %.1f (%s); raw (%d workers) %.1f (%s)\n",
		r.Pipeline.VSphere.PerPod, r.Pipeline.VSphere.topMethods(8), r.Raw.Workers, r.Raw.VSphere.PerPod, r.Raw.VSphere.topMethods(8))
	var stages []string
	for _, st := range stageTypes {
		if v, ok := r.Pipeline.StagesP50MS[st.name]; ok {
			stages = append(stages, fmt.Sprintf("%s %.0f", st.name, v))
		}
	}
	fmt.Fprintf(w, "pipeline stages, median ms after the request: %s\n", strings.Join(stages, ", "))
	if c := r.Cost; c.WritesPerPod > 0 {
		var per []string
		for _, n := range c.streamsByCost() {
			per = append(per, fmt.Sprintf("%s %.2f", n, c.Streams[n]))
		}
		fmt.Fprintf(w, "cost per pod: %.2f JetStream writes (%s); CPU %.1f ms in this process, %.1f ms redis-server\n",
			c.WritesPerPod, strings.Join(per, ", "), c.CPUMSPerPod, c.RedisCPUMSPerPod)
	}
	ic := r.ImageCache
	fmt.Fprintf(w, "image cache (%s): cold %.0f ms, %s pulled; warm %.0f ms, %s pulled\n",
		ic.Image, ic.ColdMS, bytesize.IEC(ic.ColdBytes), ic.WarmMS, bytesize.IEC(ic.WarmBytes))
	if d := r.ImageDisks; d != nil {
		fmt.Fprintf(w, "image disks (%s, %d layers, %s, %s compressed): cold pull+write %.1f MB/s (%.0f ms) vs go-containerregistry pull+extract %.1f MB/s (%.0f ms): %.2f× (medians of %d images); warm %.0f ms = %.1f%% of cold\n",
			d.Image, d.Layers, bytesize.IEC(d.Bytes), bytesize.IEC(d.Compressed), d.ColdMBps, d.ColdMS, d.BaselineMBps, d.BaselineMS, d.Ratio, len(d.ColdRoundsMS), d.WarmMS, 100*d.WarmToCold)
	}
	if d := r.DataPlane; d != nil {
		if d.Skipped != "" {
			fmt.Fprintf(w, "data plane: skipped: %s\n", d.Skipped)
		} else {
			fmt.Fprintf(w, "data plane (%d pods of %s at once with guests on %d hosts, runtime %s): %d Running; request → all containers running p50/p95/p99 %.0f / %.0f / %.0f ms, all in %.1fs; direct %s run of the same bundles (%d workers): %.0f / %.0f / %.0f ms, all in %.1fs; p99 %.2f×, all %.2f× (target ≤ 3×)\n",
				d.Pods, d.Image, d.Hosts, d.Runtime, d.Running, d.LatencyMS.P50, d.LatencyMS.P95, d.LatencyMS.P99, d.Seconds, d.Direct.Runtime, d.Direct.Workers,
				d.Direct.LatencyMS.P50, d.Direct.LatencyMS.P95, d.Direct.LatencyMS.P99, d.Direct.Seconds, d.P99ToDirect, d.SecondsToDirect)
			printStages(w, "data plane stages", d.Stages)
			if c := d.Cost; c != nil && c.WritesPerPod > 0 {
				var per []string
				for _, n := range c.streamsByCost() {
					per = append(per, fmt.Sprintf("%s %.2f", n, c.Streams[n]))
				}
				fmt.Fprintf(w, "data plane cost per pod of the burst: %.2f JetStream writes (%s); CPU %.1f ms in this process (guests apart)\n",
					c.WritesPerPod, strings.Join(per, ", "), c.CPUMSPerPod)
			}
			if pc := d.Paced; pc != nil {
				fmt.Fprintf(w, "data plane paced (%d pods at %g/s): %d Running; request → all containers running p50/p95/p99 %.0f / %.0f / %.0f ms (target p99 ≤ 2 s); direct %s run at the same rate: %.0f / %.0f / %.0f ms; p99 %.2f× (target ≤ 3×)\n",
					pc.Pods, pc.Rate, pc.Running, pc.LatencyMS.P50, pc.LatencyMS.P95, pc.LatencyMS.P99,
					pc.Direct.Runtime, pc.Direct.LatencyMS.P50, pc.Direct.LatencyMS.P95, pc.Direct.LatencyMS.P99, pc.P99ToDirect)
				printStages(w, "data plane paced stages", pc.Stages)
			}
		}
	}
	if f := r.Fork; f != nil {
		if f.Skipped != "" {
			fmt.Fprintf(w, "fork: skipped: %s\n", f.Skipped)
		} else {
			fmt.Fprintf(w, "fork (%s, guests on, channel %s): created p50 %.0f ms (VM ready %.0f), forked p50 %.0f ms (VM ready %.0f), request → container running: created / forked %s (target ≥ 3×); %d not forked, %d resumed a standby\n",
				count(f.Pairs, "pair", "pairs"), f.Channel, f.Created.P50, f.CreatedVMReady.P50, f.Forked.P50, f.ForkedVMReady.P50, ratio(f.CreatedToForkedP50), f.NotForked, f.Resumed)
		}
	}
	if q != nil {
		if q.Skipped != "" {
			fmt.Fprintf(w, "boot image under QEMU: skipped: %s\n", q.Skipped)
		} else {
			fmt.Fprintf(w, "boot image under QEMU (%s, TCG, 1 vCPU, 512 MiB; %s, reported over the serial channel): booted p50 %.1f s (max %.1f s), forked p50 %.1f s (max %.1f s): %s; of the fork, QEMU's save and restore p50 %.2f s (max %.2f s), the child's takeover to running the rest\n",
				cmp.Or(q.QEMU, "QEMU"), count(q.Pairs, "pair", "pairs"), q.Boot.P50/1000, q.Boot.Max/1000, q.Fork.P50/1000, q.Fork.Max/1000, ratio(q.Ratio), q.SaveRestore.P50/1000, q.SaveRestore.Max/1000)
		}
	}
	m := r.Memory
	est := "measured"
	if m.Estimated {
		est = "estimate"
	}
	if len(m.Services) == 0 {
		fmt.Fprintf(w, "memory: peak RSS %s (services + NATS + simulator in one process); live heap %s → %s, %s per pod; 10,000 pods ≈ %s heap (%s)\n",
			bytesize.IEC(m.PeakRSSBytes), bytesize.IEC(m.HeapBeforeBytes), bytesize.IEC(m.HeapAfterBytes), bytesize.IEC(m.HeapPerPodBytes), bytesize.IEC(m.Est10kPodsBytes), est)
		return nil
	}
	var parts []string
	exes := map[string]bool{}
	for _, s := range m.Services {
		parts = append(parts, fmt.Sprintf("%s %s (%s private)", s.Name, bytesize.IEC(s.RSSBytes), bytesize.IEC(s.AnonBytes)))
		if s.Executable != "" {
			exes[s.Executable] = true
		}
	}
	fmt.Fprintf(w, "memory: control plane (%d service processes of %s): %s resident counting the shared executable once; PSS summed %s; RSS summed %s, peak %s (target ≤ 500 MB at 10,000 pods): %s\n",
		len(m.Services), strings.Join(slices.Sorted(maps.Keys(exes)), ", "), bytesize.IEC(m.ControlPlaneResidentBytes), bytesize.IEC(m.ControlPlanePSSBytes), bytesize.IEC(m.ControlPlaneRSSBytes), bytesize.IEC(m.ControlPlanePeakBytes), strings.Join(parts, ", "))
	fmt.Fprintf(w, "memory: NATS + simulator + bench in this process: peak RSS %s; live heap %s → %s\n",
		bytesize.IEC(m.PeakRSSBytes), bytesize.IEC(m.HeapBeforeBytes), bytesize.IEC(m.HeapAfterBytes))
	return nil
}

// count prints n and the noun, singular or plural.
func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// rate prints a rate with one decimal below 10, whole numbers above.
func rate(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// millis prints milliseconds, as seconds from 10 s on.
func millis(ms float64) string {
	if ms >= 10_000 {
		return fmt.Sprintf("%.0f s", ms/1000)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

// ratio prints two significant digits (0.013×, 0.82×, 7.6×), whole numbers
// from 10 on.
func ratio(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.2g×", r)
}

// SVG draws the run as two bar charts: throughput of the pipeline against
// the two baselines, and the pipeline's latency percentiles.
func (r *Result) SVG() string {
	const (
		width  = 760
		left   = 250
		right  = 110
		barH   = 26
		gap    = 12
		plotW  = width - left - right
		titleH = 70
	)
	var b strings.Builder
	type bar struct {
		label, value string
		v            float64
		colour       string
	}
	section := func(y int, title string, bars []bar) int {
		fmt.Fprintf(&b, `<text x="20" y="%d" class="h">%s</text>`+"\n", y, html.EscapeString(title))
		y += 14
		top := 0.0
		for _, br := range bars {
			top = max(top, br.v)
		}
		if top <= 0 {
			top = 1
		}
		for _, br := range bars {
			w := int(br.v / top * plotW)
			fmt.Fprintf(&b, `<text x="%d" y="%d" class="l" text-anchor="end">%s</text>`+"\n", left-10, y+barH*2/3, html.EscapeString(br.label))
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", left, y, max(w, 1), barH, br.colour)
			fmt.Fprintf(&b, `<text x="%d" y="%d" class="v">%s</text>`+"\n", left+max(w, 1)+8, y+barH*2/3, html.EscapeString(br.value))
			y += barH + gap
		}
		return y + 16
	}
	lat := r.Pipeline.LatencyMS
	y := titleH
	y = section(y, "Throughput to VM running (higher is better)", []bar{
		{"podvisor pipeline", rate(r.Pipeline.PodsPerS) + " pods/s", r.Pipeline.PodsPerS, "#2b7bb9"},
		{fmt.Sprintf("raw govmomi, %d workers", r.Raw.Workers), rate(r.Raw.VMsPerS) + " VMs/s", r.Raw.VMsPerS, "#7f7f7f"},
		{"sequential, one at a time", rate(r.Sequential.VMsPerS) + " VMs/s", r.Sequential.VMsPerS, "#bfbfbf"},
	})
	y = section(y, "Pipeline latency, request → VM running (lower is better)", []bar{
		{"p50", millis(lat.P50), lat.P50, "#59a14f"},
		{"p95", millis(lat.P95), lat.P95, "#edc948"},
		{"p99", millis(lat.P99), lat.P99, "#e15759"},
	})
	fmt.Fprintf(&b, `<text x="20" y="%d" class="n">pipeline/raw %s · pipeline/sequential %s · %d of %d pod VMs running · scheduling only %.0f pods/s</text>`+"\n",
		y, ratio(r.Ratios.PipelineToRaw), ratio(r.Ratios.PipelineToSequential), r.Pipeline.VMRunning, r.Pipeline.Pods, r.Scheduling.PodsPerS)
	y += 16
	fmt.Fprintf(&b, `<text x="20" y="%d" class="n">image cache cold %.0f ms (%s pulled) / warm %.0f ms (%s) · peak RSS %s · heap %s per pod</text>`+"\n",
		y, r.ImageCache.ColdMS, bytesize.IEC(r.ImageCache.ColdBytes), r.ImageCache.WarmMS, bytesize.IEC(r.ImageCache.WarmBytes), bytesize.IEC(r.Memory.PeakRSSBytes), bytesize.IEC(r.Memory.HeapPerPodBytes))
	height := y + 20
	var out strings.Builder
	fmt.Fprintf(&out, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	out.WriteString(`<style>.t{font-size:18px;font-weight:bold}.s{font-size:12px;fill:#555}.h{font-size:14px;font-weight:bold}.l{font-size:13px}.v{font-size:13px;fill:#333}.n{font-size:11px;fill:#555}</style>` + "\n")
	fmt.Fprintf(&out, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&out, `<text x="20" y="28" class="t">podvisor bench: %d pods, %d simulated hosts</text>`+"\n", r.Setup.Pods, r.Setup.Hosts)
	fmt.Fprintf(&out, `<text x="20" y="48" class="s">%s · %d CPUs · %s · %s</text>`+"\n",
		html.EscapeString(r.Command()), r.Setup.CPUs, html.EscapeString(r.Setup.GoVersion), r.Setup.Started.Format("2006-01-02"))
	out.WriteString(b.String())
	out.WriteString("</svg>\n")
	return out.String()
}

// printStages prints p50/p99 ms after the request for each stage reached.
func printStages(w io.Writer, title string, st []Stage) {
	if len(st) == 0 {
		return
	}
	parts := make([]string, len(st))
	for i, s := range st {
		parts[i] = fmt.Sprintf("%s %.0f/%.0f", s.Name, s.P50, s.P99)
	}
	fmt.Fprintf(w, "%s, p50/p99 ms after the request: %s\n", title, strings.Join(parts, ", "))
}
