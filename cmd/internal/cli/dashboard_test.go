package cli

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/cmd/internal/serve"
)

// The status page, loaded in headless Chromium as an operator would: pods
// applied with the CLI show up with their VMs running on their hosts (phase
// Starting: `up` runs no guests, so containers never report), a hostile event
// source is shown as text, a pod's trace link leads to its waterfall, and
// the page is saved as a screenshot: in the test's temporary directory, or
// as docs/dashboard.png for the README when PODVISOR_UPDATE_SCREENSHOT=1
// (a test run leaves the tree as it found it otherwise).
func TestDashboardInChromium(t *testing.T) {
	privtest.RequireTools(t, "chromium")
	chromium, _ := exec.LookPath("chromium")
	dir := upWithTracing(t)
	vars, _ := serve.ReadEnvFile(filepath.Join(dir, "env"))

	var manifest strings.Builder
	for _, name := range []string{"web-1", "web-2", "worker"} {
		fmt.Fprintf(&manifest, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: dash}\nspec: {containers: [{name: a, image: %s/podvisor/web:1.0, resources: {requests: {cpu: 500m, memory: 256Mi}}}]}\n",
			name, vars["PODVISOR_REGISTRY"])
	}
	if out, errOut, code := run(t, dir, manifest.String(), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: exit %d: %s %s", code, out, errOut)
	}
	// An event whose subject is markup: the feed must show it as text.
	nc, err := natsFromEnv(vars)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	hostile := `{"specversion":"1.0","type":"io.podvisor.host.cordon.requested.v1","source":"test","id":"x-1","subject":"<img id=pwned src=x>","datacontenttype":"application/json","data":{"host":"nowhere"}}`
	if _, err := nc.Request("pv.host.cordon.requested", []byte(hostile), 5*time.Second); err != nil {
		t.Fatal(err)
	}

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(t.TempDir()),
		// Chromium's own scratch files (org.chromium.Chromium.*) go to
		// TMPDIR: the test's directory, removed with it.
		chromedp.Env("TMPDIR=" + t.TempDir()),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1400, 1000),
		// The status page's certificate comes from up's own CA, which this
		// throwaway browser profile does not hold; what the page shows is
		// under test here, its TLS in the security tests.
		chromedp.Flag("ignore-certificate-errors", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	// The first action starts the browser and must not carry a timeout.
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(vars["PODVISOR_UI_URL"])); err != nil {
		t.Fatalf("open the status page: %v", err)
	}
	// The pods as the page shows them: namespace, name, phase, host, IP.
	var rows [][]string
	want := map[string]bool{"web-1": true, "web-2": true, "worker": true}
	deadline := time.Now().Add(60 * time.Second)
	for {
		rows, err = chromedp.Run(ctx, chromedp.Evaluate[[][]string](`Array.from(document.querySelectorAll("#pods tbody tr")).map(tr => Array.from(tr.cells).map(c => c.textContent))`))
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, r := range rows {
			if len(r) >= 5 && r[0] == "dash" && want[r[1]] && strings.HasPrefix(r[2], "Starting") && strings.HasPrefix(r[3], "esx-") && r[4] != "-" {
				running++
			}
		}
		if running == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page does not show the pods' VMs running on hosts within 60s; rows: %v", rows)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The page agrees with the records the CLI reads.
	out, _, _ := run(t, dir, "", "get", "pods", "-n", "dash", "-o", "custom-columns=NAME:.metadata.name,HOST:.spec.nodeName", "--no-headers")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		found := false
		for _, r := range rows {
			if len(f) == 2 && r[1] == f[0] && r[3] == f[1] {
				found = true
			}
		}
		if !found {
			t.Errorf("CLI says %q; the page rows are %v", line, rows)
		}
	}
	// Hosts carry bars and pod counts; the feed shows the hostile source as text.
	// The hosts' pod counts come from the host records, which the scheduler
	// rewrites on its own interval: they may follow the pods' rows a little.
	var meters, hostPods int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		meters = evaluate[int](t, ctx, `document.querySelectorAll("#hosts meter").length`)
		hostPods = evaluate[int](t, ctx, `Array.from(document.querySelectorAll("#hosts tbody tr")).reduce((n, tr) => n + Number(tr.cells[5].textContent), 0)`)
		if (meters > 0 && hostPods >= len(want)) || time.Now().After(deadline) {
			break
		}
	}
	feedText := evaluate[string](t, ctx, `document.getElementById("feed").textContent`)
	pwned := evaluate[bool](t, ctx, `document.getElementById("pwned") !== null`)
	if meters == 0 || hostPods < len(want) {
		t.Errorf("hosts table: %d bars, %d pods in all; want bars and at least %d pods", meters, hostPods, len(want))
	}
	if pwned || !strings.Contains(feedText, "<img id=pwned src=x>") {
		t.Errorf("hostile subject: element created %v; feed text has it literally: %v\n%s", pwned, strings.Contains(feedText, "<img id=pwned"), feedText)
	}
	if !strings.Contains(feedText, "pod.vm.ready") {
		t.Errorf("the live feed lacks pod.vm.ready events: %q", feedText)
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatal(err)
	}
	shotPath := filepath.Join(t.TempDir(), "dashboard.png")
	if os.Getenv("PODVISOR_UPDATE_SCREENSHOT") == "1" {
		shotPath = filepath.Join("..", "..", "..", "docs", "dashboard.png")
	}
	if err := os.WriteFile(shotPath, shot, 0o644); err != nil {
		t.Errorf("save screenshot: %v", err)
	}

	// Follow the pod's trace link to its waterfall. The click is the
	// element's own (the table re-renders every second, so a node looked up
	// by the protocol can be gone by the time a mouse event reaches it).
	if !evaluate[bool](t, ctx, `(() => { const a = document.querySelector('#pods a[href="/trace/dash/web-1"]'); if (!a) return false; a.click(); return true })()`) {
		t.Fatal("no trace link for dash/web-1 on the page")
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`table.waterfall`))); err != nil {
		t.Fatalf("follow the trace link: %v", err)
	}
	title := evaluate[string](t, ctx, `document.title`)
	spans := evaluate[int](t, ctx, `document.querySelectorAll("table.waterfall tr.span rect").length`)
	services := evaluate[string](t, ctx, `Array.from(document.querySelectorAll("table.waterfall tr.span td:first-child")).map(td => td.textContent).join(" ")`)
	if title != "trace of dash/web-1" || spans < 5 {
		t.Errorf("trace page %q with %d span bars; want the pod's waterfall", title, spans)
	}
	for _, svc := range []string{"provisioner", "scheduler", "imagecache", "netconfig"} {
		if !strings.Contains(services, svc) {
			t.Errorf("waterfall lacks spans of %s: %s", svc, services)
		}
	}
}

func evaluate[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}
