package bench

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// The boot image's figure: rows of its p50s and a ratio row in the table,
// a line with its detail, and qemu_fork in the JSON with the keys the
// issue names; a skipped section says why and prints no figure.
func TestQEMUForkInTheTableAndJSON(t *testing.T) {
	q := &QEMUFork{Pairs: 2, QEMU: "QEMU emulator version 7.2.22", Boot: Latency{P50: 24300, P95: 31200, P99: 31200, Max: 31200},
		Fork: Latency{P50: 4900, P95: 5100, P99: 5100, Max: 5100}, SaveRestore: Latency{P50: 800, P95: 900, P99: 900, Max: 900}}
	q.Ratio = qemuRatio(q.Boot, q.Fork)
	if q.Ratio < 4.95 || q.Ratio > 4.96 {
		t.Fatalf("ratio %v, want boot p50 / fork p50 = 4.959…", q.Ratio)
	}
	r := &Result{QEMUFork: q}
	var out strings.Builder
	if err := r.Table(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"boot image booted (QEMU TCG)", "24300 / 31200 / 31200 ms", "2 templates: power-on → container running", "2 children: fork",
		"boot image forked (QEMU TCG)", "4900 / 5100 / 5100 ms", "QEMU's save and restore p50 800 ms",
		"booted / forked (boot image, p50)  5×", "(target ≥ 3×)",
		"boot image under QEMU (QEMU emulator version 7.2.22, TCG, 1 vCPU, 512 MiB; 2 pairs, reported over the serial channel): booted p50 24.3 s (max 31.2 s), forked p50 4.9 s (max 5.1 s): 5×; of the fork, QEMU's save and restore p50 0.80 s",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, out.String())
		}
	}

	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		QEMUFork map[string]any `json:"qemu_fork"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	p50 := func(key string) any {
		m, _ := doc.QEMUFork[key].(map[string]any)
		return m["p50"]
	}
	if p50("boot_ms") != 24300.0 || p50("fork_ms") != 4900.0 || p50("save_restore_ms") != 800.0 ||
		doc.QEMUFork["ratio"] != q.Ratio || doc.QEMUFork["pairs"] != 2.0 || doc.QEMUFork["skipped"] != nil {
		t.Errorf("qemu_fork = %v, want boot_ms, fork_ms and save_restore_ms p50s, the ratio and the pairs", doc.QEMUFork)
	}
	// A saved run (--from) reads back the same.
	var back Result
	if err := json.Unmarshal(b, &back); err != nil || back.QEMUFork == nil || *back.QEMUFork != *q {
		t.Errorf("read back %+v (%v), want %+v", back.QEMUFork, err, q)
	}

	out.Reset()
	one := *q
	one.Pairs = 1
	r.QEMUFork = &one
	if err := r.Table(&out); err != nil || !strings.Contains(out.String(), "1 template: power-on") || !strings.Contains(out.String(), "1 child: fork") ||
		!strings.Contains(out.String(), "512 MiB; 1 pair, reported") {
		t.Errorf("one pair prints %q (%v), want it counted in the singular", out.String(), err)
	}
	out.Reset()
	r.QEMUFork = &QEMUFork{Pairs: 1, Skipped: "needs QEMU and the boot image's tools: qemu-system-x86_64 not found"}
	if err := r.Table(&out); err != nil || !strings.Contains(out.String(), "boot image under QEMU: skipped: needs QEMU") ||
		strings.Contains(out.String(), "booted / forked") || strings.Contains(out.String(), "boot image booted") {
		t.Errorf("a skipped section prints %q (%v), want the reason and no figure", out.String(), err)
	}
	out.Reset()
	r.QEMUFork = nil
	if b, _ := json.Marshal(r); strings.Contains(string(b), "qemu_fork") {
		t.Error("a run without the section has qemu_fork in its JSON")
	}
	if err := r.Table(&out); err != nil || strings.Contains(out.String(), "boot image") {
		t.Errorf("a run without the section prints %q (%v)", out.String(), err)
	}
	if qemuRatio(q.Boot, Latency{}) != 0 {
		t.Error("a ratio against no fork is not 0")
	}
}

// Without QEMU the section says why and measures nothing, and that is no
// failure of the run.
func TestQEMUForkSkippedWithoutQEMU(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	q, err := runQEMUFork(context.Background(), Config{QEMUPairs: 1, StateDir: t.TempDir()}, progress{})
	if err != nil || q.Skipped == "" || q.Pairs != 1 || q.Boot.P50 != 0 || q.Ratio != 0 {
		t.Errorf("runQEMUFork without QEMU: %+v, %v; want it skipped, saying why, with no figure", q, err)
	}
	if err := (Config{Pods: 1, Hosts: 1, QEMUPairs: 21}).Validate(); err == nil || !strings.Contains(err.Error(), "qemu pairs 21") {
		t.Errorf("Validate: %v, want it to name the qemu pairs", err)
	}
}

// The simulated datacenter's fork section is in the table, not only in the
// progress lines and the JSON.
func TestForkInTheTable(t *testing.T) {
	f := &Fork{Pairs: 4, Channel: "socket", Created: Latency{P50: 79}, CreatedVMReady: Latency{P50: 31},
		Forked: Latency{P50: 50}, ForkedVMReady: Latency{P50: 35}, CreatedToForkedP50: 1.58, NotForked: 0, Resumed: 4}
	for _, c := range []struct {
		r    *Result
		want string
	}{
		{&Result{Fork: f}, "fork (4 pairs, guests on, channel socket): created p50 79 ms (VM ready 31), forked p50 50 ms (VM ready 35), request → container running: created / forked 1.6× (target ≥ 3×); 0 not forked, 4 resumed a standby"},
		{&Result{Fork: &Fork{Skipped: "needs root"}}, "fork: skipped: needs root"},
	} {
		var out strings.Builder
		if err := c.r.Table(&out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), c.want) {
			t.Errorf("the table lacks %q:\n%s", c.want, out.String())
		}
	}
}
