package cli

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
)

// kubectl's --timestamps, --since, --since-time and --limit-bytes: a bad
// value or both of --since and --since-time is a usage error naming the
// flag, before anything is asked.
func TestLogsTimeFlagErrors(t *testing.T) {
	runCases(t, t.TempDir(), []cliCase{
		{"since and since-time", "", []string{"logs", "web", "--since", "1m", "--since-time", "2026-01-02T03:04:05Z"}, "", "--since and --since-time: give at most one", 2},
		{"since-time not RFC3339", "", []string{"logs", "web", "--since-time", "yesterday"}, "", `--since-time: "yesterday" is not an RFC3339 time`, 2},
		{"since not a duration", "", []string{"logs", "web", "--since", "ten"}, "", `invalid argument "ten" for "--since"`, 2},
		{"since negative", "", []string{"logs", "web", "--since", "-5s"}, "", "--since: -5s, want a duration of 0 (the whole log) or more", 2},
		{"tail below -1", "", []string{"logs", "web", "--tail", "-5"}, "", "--tail: -5, want -1 (the whole log), 0 or more", 2},
		{"limit-bytes negative", "", []string{"logs", "web", "--limit-bytes", "-3"}, "", "--limit-bytes: -3, want 0 (no limit) or more", 2},
	})
}

// The flags reach the pod's agent as the request's Timestamps, SinceTime
// (--since counted back from now) and LimitBytes; an agent that keeps no
// line times is not asked, and the refusal names the flag.
func TestLogsTimeFlagsReachTheAgent(t *testing.T) {
	dir, b, host, svc := upWithHostAgent(t)
	guests := map[string]*guesttest.Guest{}
	for name, caps := range map[string][]string{"current": {guestchannel.CapLogsTimestamps}, "older": nil} {
		rec := events.PodRecord{UID: "uid-" + name, Namespace: "default", Name: name, Host: host, Phase: events.PodPhaseRunning}
		rec.Pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "img"}}
		putRecord(t, context.Background(), b, events.BucketPods, events.PodRecordKey("default", name), rec)
		g := guesttest.Dial(t, svc.Socket(), guestchannel.Hello{PodUID: rec.UID, Namespace: "default", Name: name, BootID: "b1", Capabilities: caps}, "app")
		g.SetLog("app", "app one\n")
		guests[name] = g
		eventually(t, name+"'s channel", func() bool {
			_, _, code := run(t, dir, "", "logs", name)
			return code == 0
		})
	}
	last := func(name string) guestchannel.LogsRequest {
		reqs := guests[name].LogsRequests()
		return reqs[len(reqs)-1]
	}

	before := time.Now()
	if _, errOut, code := run(t, dir, "", "logs", "current", "--timestamps", "--since", "1h", "--limit-bytes", "10"); code != 0 {
		t.Fatalf("logs --timestamps --since 1h --limit-bytes 10: exit %d, %s", code, errOut)
	}
	got := last("current")
	if !got.Timestamps || got.LimitBytes != 10 || got.SinceTime == nil ||
		got.SinceTime.Before(before.Add(-time.Hour)) || got.SinceTime.After(time.Now().Add(-time.Hour)) {
		t.Errorf("the agent got %+v, want timestamps, limitBytes 10 and sinceTime an hour before the command", got)
	}
	if _, errOut, code := run(t, dir, "", "logs", "current", "--since-time", "2026-01-02T03:04:05.5+01:00"); code != 0 {
		t.Fatalf("logs --since-time: exit %d, %s", code, errOut)
	}
	if got := last("current"); got.SinceTime == nil || !got.SinceTime.Equal(time.Date(2026, 1, 2, 2, 4, 5, 5e8, time.UTC)) || got.Timestamps || got.LimitBytes != 0 {
		t.Errorf("the agent got %+v, want only sinceTime 2026-01-02T02:04:05.5Z", got)
	}
	// 0, as kubectl takes it: no since, no limit.
	if _, errOut, code := run(t, dir, "", "logs", "current", "--since", "0s", "--limit-bytes", "0"); code != 0 {
		t.Fatalf("logs --since 0s --limit-bytes 0: exit %d, %s", code, errOut)
	}
	if got := last("current"); got.SinceTime != nil || got.LimitBytes != 0 {
		t.Errorf("the agent got %+v, want neither sinceTime nor limitBytes", got)
	}

	asked := len(guests["older"].LogsRequests())
	runCases(t, dir, []cliCase{
		{"timestamps of an older agent", "", []string{"logs", "older", "--timestamps"}, "", "timestamps (--timestamps): the pod VM agent of pod default/older", 1},
		{"since of an older agent", "", []string{"logs", "older", "--since", "5m"}, "", "sinceTime (--since, --since-time)", 1},
	})
	if n := len(guests["older"].LogsRequests()); n != asked {
		t.Errorf("the older agent was asked %d more times, want none", n-asked)
	}
}
