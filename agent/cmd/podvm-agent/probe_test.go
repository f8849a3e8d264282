package main

import (
	"testing"

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
	if l := v.Container("live"); l.LastState == nil || l.LastState.Kind != guestchannel.StateTerminated {
		t.Errorf("live's last state = %+v, want the killed instance", l.LastState)
	}
	// The new instance has a fresh root where its shell touched
	// /tmp/healthy again, and the probe leaves it running.
	guesttest.Eventually(t, "/tmp/healthy in the new instance", wait, func() bool {
		return g.Host.Exec("live", nil, "test", "-f", "/tmp/healthy").ExitCode == 0
	})
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
	// sleep as its container's PID 1 has no SIGTERM handler: the kernel
	// ignores the signal, the grace period runs out, SIGKILL ends it.
	if stopped := g.Host.Stop(1, wait); len(stopped.Killed) != 1 || stopped.Killed[0] != "app" {
		t.Errorf("stopped = %+v, want app killed after the grace period", stopped)
	}
}
