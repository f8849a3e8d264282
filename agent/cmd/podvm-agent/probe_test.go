package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
	"github.com/podvisor/podvisor/agent/privtest"
)

// Probes: a failing liveness probe restarts its container; a readiness
// probe over HTTP sets Ready and takes it away; a TCP startup probe holds
// Started back until the port opens.
func TestProbes(t *testing.T) {
	needGuest(t)
	live := sh("live", "touch /tmp/healthy; exec sleep 3600")
	// The delay keeps the probe off a new instance until its shell has
	// touched the file.
	live.LivenessProbe = &guestchannel.Probe{Exec: &guestchannel.ExecAction{Command: []string{"test", "-f", "/tmp/healthy"}},
		InitialDelaySeconds: 1, PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	web := sh("web", "mkdir -p /www; echo ok > /www/ready.html; sleep 1; exec httpd -f -p 8080 -h /www")
	web.ReadinessProbe = &guestchannel.Probe{HTTPGet: &guestchannel.HTTPGetAction{Path: "/ready.html", Port: 8080},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	web.StartupProbe = &guestchannel.Probe{TCPSocket: &guestchannel.TCPSocketAction{Port: 8080},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 30}
	spec := image.Spec("probes", "Always", 1, nil, []guestchannel.Container{live, web})
	g := guest(t, spec, guesttest.Options{})

	v := g.Host.Wait("web running", wait, running("web"))
	if w := v.Container("web"); w.Started || w.Ready {
		t.Errorf("web before its startup probe passed: started=%v ready=%v, want neither", w.Started, w.Ready)
	}
	g.Host.Wait("web started and ready", wait, func(v guesttest.View) bool {
		w := v.Container("web")
		return w.Started && w.Ready
	})
	if r := g.Host.Exec("web", nil, "rm", "/www/ready.html"); r.ExitCode != 0 {
		t.Fatalf("rm: %+v", r)
	}
	g.Host.Wait("web not ready", wait, func(v guesttest.View) bool {
		w := v.Container("web")
		return !w.Ready && w.State.Kind == guestchannel.StateRunning
	})
	if r := g.Host.Exec("web", nil, "sh", "-c", "echo ok > /www/ready.html"); r.ExitCode != 0 {
		t.Fatalf("restore: %+v", r)
	}
	v = g.Host.Wait("web ready again", wait, func(v guesttest.View) bool { return v.Container("web").Ready })
	if v.Container("web").RestartCount != 0 {
		t.Errorf("readiness restarted web: %+v", v.Container("web"))
	}

	g.Host.Wait("live running", wait, running("live"))
	if r := g.Host.Exec("live", nil, "rm", "/tmp/healthy"); r.ExitCode != 0 {
		t.Fatalf("rm: %+v", r)
	}
	v = g.Host.Wait("live restarted", wait, func(v guesttest.View) bool {
		l := v.Container("live")
		return l.RestartCount == 1 && l.State.Kind == guestchannel.StateRunning
	})
	if l := v.Container("live"); l.LastState == nil || l.LastState.Kind != guestchannel.StateTerminated ||
		!strings.HasPrefix(l.LastState.Message, `liveness probe failed: command "test -f /tmp/healthy" exited with 1`) {
		t.Errorf("live's last state = %+v, want the killed instance, the probe's failure in its message", l.LastState)
	}
	// The new instance has a fresh root where its shell touched
	// /tmp/healthy again, and the probe leaves it running.
	guesttest.Eventually(t, "/tmp/healthy in the new instance", wait, func() bool {
		return g.Host.Exec("live", nil, "test", "-f", "/tmp/healthy").ExitCode == 0
	})
}

// A liveness or startup probe's kill says why in the container's
// terminated state (the kubelet's event says it), and --previous reads the
// killed instance's log, even the first's: once it restarted (the first
// restart is immediate), and in the back-off before a later restart.
func TestLivenessKillSaysWhy(t *testing.T) {
	needGuest(t)
	full := withVolume(sh("full", `n=$(cat /v/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /v/n; echo "instance $n"; `+
		`mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www`))
	full.LivenessProbe = &guestchannel.Probe{HTTPGet: &guestchannel.HTTPGetAction{Path: "/index.html", Port: 8080},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 2}
	// Nothing listens on port 9.
	never := sh("never", "exec sleep 3600")
	never.StartupProbe = &guestchannel.Probe{TCPSocket: &guestchannel.TCPSocketAction{Port: 9},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	spec := emptyDir(image.Spec("liveness", "Always", 1, nil, []guestchannel.Container{full, never}))
	// A back-off long enough to ask for the log in it.
	g := guest(t, spec, guesttest.Options{Backoff: 5 * time.Second, MaxBackoff: 5 * time.Second})

	// removePage fails full's liveness probe once the running instance
	// wrote its page (running is the process started, not its script done).
	removePage := func() {
		guesttest.Eventually(t, "full's page written", wait, func() bool {
			return g.Host.Exec("full", nil, "test", "-f", "/www/index.html").ExitCode == 0
		})
		if r := g.Host.Exec("full", nil, "rm", "/www/index.html"); r.ExitCode != 0 {
			t.Fatalf("rm: %+v", r)
		}
	}
	// httpd as PID 1 has no SIGTERM handler: the grace runs out.
	want := "liveness probe failed: HTTP probe failed with statuscode: 404; killed after the grace period of 1s"
	checkKilled := func(v guesttest.View) {
		t.Helper()
		if last := v.Container("full").LastState; last == nil || last.Reason != "Error" || last.ExitCode != 137 ||
			last.Signal != 9 || last.Message != want {
			t.Errorf("lastState = %+v, want Error, exit 137, signal 9, message %q", last, want)
		}
	}

	g.Host.Wait("full running", wait, running("full"))
	removePage()
	v := g.Host.Wait("full restarted", wait, func(v guesttest.View) bool {
		return v.Container("full").RestartCount == 1 && running("full")(v)
	})
	checkKilled(v)
	prev, errMsg := g.Host.Logs(guestchannel.LogsRequest{Container: "full", Previous: true})
	if prev != "instance 1\n" || errMsg != "" {
		t.Errorf("logs --previous after the first restart = %q, %q; want the killed first instance's", prev, errMsg)
	}

	removePage()
	v = g.Host.Wait("full in back-off", wait, func(v guesttest.View) bool {
		return v.Container("full").State.Reason == "CrashLoopBackOff"
	})
	checkKilled(v)
	prev, errMsg = g.Host.Logs(guestchannel.LogsRequest{Container: "full", Previous: true})
	if prev != "instance 2\n" || errMsg != "" {
		t.Errorf("logs --previous in back-off = %q, %q; want the killed instance's", prev, errMsg)
	}
	v = g.Host.Wait("never in back-off", wait, func(v guesttest.View) bool {
		return v.Container("never").State.Reason == "CrashLoopBackOff"
	})
	if last := v.Container("never").LastState; last == nil ||
		!strings.HasPrefix(last.Message, "startup probe failed: dial tcp 127.0.0.1:9: connect: connection refused") {
		t.Errorf("never's lastState = %+v, want the startup probe's failure in its message", last)
	}
	if v, _, _ := g.Host.Snapshot(); v.Container("full").RestartCount != 1 {
		t.Fatal("full restarted before its log was read: the back-off is too short for this test")
	}
	v = g.Host.Wait("full restarted again", wait, func(v guesttest.View) bool {
		return v.Container("full").RestartCount == 2 && running("full")(v)
	})
	if prev, _ := g.Host.Logs(guestchannel.LogsRequest{Container: "full", Previous: true}); prev != "instance 2\n" {
		t.Errorf("logs --previous of the restarted container = %q, want the killed instance's", prev)
	}

	// A stop that has to kill says so.
	g.Host.Stop(1, wait)
	v = g.Host.Wait("full stopped", wait, func(v guesttest.View) bool {
		return v.Container("full").State.Kind == guestchannel.StateTerminated
	})
	if st := v.Container("full").State; st.Message != "pod stopped; killed after the grace period of 1s" {
		t.Errorf("stopped state = %+v, want the stop's kill in its message", st)
	}
}

// The agent redials when the host side drops the connection and sends
// hello and its full state again.
func TestReconnectResendsFullState(t *testing.T) {
	needGuest(t)
	spec := image.Spec("reconnect", "Always", 1, nil, []guestchannel.Container{sh("app", "exec sleep 3600")})
	g := guest(t, spec, guesttest.Options{})
	g.Host.Wait("app running", wait, running("app"))
	_, before, hellos := g.Host.Snapshot()

	g.Host.Drop()
	g.Host.Wait("a second hello and full status", wait, func(guesttest.View) bool {
		_, reports, h := g.Host.Snapshot()
		return len(h) == 2 && len(reports) > len(before)
	})
	_, after, hellos2 := g.Host.Snapshot()
	if hellos2[1].BootID != hellos[0].BootID || hellos2[1].PodUID != spec.UID {
		t.Errorf("second hello %+v, first %+v: want the same boot", hellos2[1], hellos[0])
	}
	full := after[len(before)]
	if !full.Full || full.Seq <= before[len(before)-1].Seq {
		t.Errorf("first report after reconnect: full=%v seq=%d, want full with seq above %d", full.Full, full.Seq, before[len(before)-1].Seq)
	}
	if len(full.Containers) != 1 || full.Containers[0].State.Kind != guestchannel.StateRunning || full.Phase != guestchannel.PhaseRunning {
		t.Errorf("full status after reconnect = %+v, want app running", full)
	}
	// Requests work on the new connection.
	if r := g.Host.Exec("app", nil, "echo", "again"); r.Stdout != "again\n" {
		t.Errorf("exec after reconnect = %+v", r)
	}
}

// crun drives the same bundles as runc.
func TestCrun(t *testing.T) {
	needGuest(t)
	privtest.RequireTools(t, "crun")
	spec := image.Spec("crun", "Never", 1, nil, []guestchannel.Container{sh("app", "echo hi; exec sleep 3600"), sh("three", "exit 3")})
	g := guest(t, spec, guesttest.Options{Runtime: "crun"})
	v := g.Host.Wait("app running, three terminated", wait, func(v guesttest.View) bool {
		return running("app")(v) && v.Container("three").State.Kind == guestchannel.StateTerminated
	})
	if c := v.Container("three").State; c.ExitCode != 3 {
		t.Errorf("three = %+v, want exit 3", c)
	}
	if r := g.Host.Exec("app", []byte("x"), "cat"); r.Stdout != "x" || r.ExitCode != 0 {
		t.Errorf("exec = %+v", r)
	}
	// crun's own complaint says "not found in $PATH" of an absolute path.
	if r := g.Host.Exec("app", nil, "/nonexistent"); r.ExitCode != 127 || r.Stderr != "/nonexistent: no such file or directory\n" {
		t.Errorf("exec /nonexistent = %+v, want exit 127 and a shell's message", r)
	}
	// sleep as its container's PID 1 has no SIGTERM handler: the kernel
	// ignores the signal, the grace period runs out, SIGKILL ends it.
	if stopped := g.Host.Stop(1, wait); len(stopped.Killed) != 1 || stopped.Killed[0] != "app" {
		t.Errorf("stopped = %+v, want app killed after the grace period", stopped)
	}
}

// Once the pod's stop began no liveness probe runs, as the kubelet stops
// probing a terminating pod: here the container's SIGTERM trap makes the
// probe fail and keeps the process on for the grace period, and the trail
// the probe and the trap write shows no probe after the trap.
func TestNoLivenessProbeAfterTheStopBegan(t *testing.T) {
	needGuest(t)
	c := sh("app", `trap 'rm -f /tmp/healthy; echo term >> /tmp/trail' TERM; touch /tmp/healthy; while true; do sleep 0.05; done`)
	c.LivenessProbe = &guestchannel.Probe{Exec: &guestchannel.ExecAction{Command: []string{"sh", "-c", "echo probe >> /tmp/trail; test -f /tmp/healthy"}},
		InitialDelaySeconds: 1, PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	spec := image.Spec("stopprobe", "Always", 2, nil, []guestchannel.Container{c})
	g := guest(t, spec, guesttest.Options{})
	g.Host.Wait("app running", wait, running("app"))
	trail := func() string {
		b, _ := os.ReadFile(filepath.Join(g.UpperDir("app"), "tmp/trail"))
		return string(b)
	}
	// The stop comes just after a probe, a period before the next: a
	// probe that began before the stop cannot write after the trap.
	guesttest.Eventually(t, "the probe running", wait, func() bool { return strings.HasPrefix(trail(), "probe\n") })
	before := trail()
	guesttest.Eventually(t, "the probe's next check", wait, func() bool { return trail() != before })
	before = trail()
	stopped := g.Host.Stop(2, wait)
	if len(stopped.Killed) != 1 {
		t.Errorf("killed = %v, want app killed after the grace period", stopped.Killed)
	}
	if got := trail(); got != before+"term\n" {
		t.Errorf("trail = %q, want %q: the trap, and no probe after it", got, before+"term\n")
	}
	v, _, _ := g.Host.Snapshot()
	if st := v.Container("app").State; st.Message != "pod stopped; killed after the grace period of 2s" {
		t.Errorf("app = %+v, want the stop's kill in its message", st)
	}
}
