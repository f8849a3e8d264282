package cli

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent/guesttest"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// TestLogsAndExecThroughTheHostAgent runs `podvisor logs` and `podvisor
// exec` as a user would, through NATS to a host agent and over the guest
// channel to a (scripted) pod VM agent.
func TestLogsAndExecThroughTheHostAgent(t *testing.T) {
	sys, dir := upForTest(t, "none")
	ctx := context.Background()
	b, err := sys.Dial(ctx, bus.IdentityAdmin) // writes pod records, as the provisioner would
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	put := func(name, uid, host string, containers ...string) {
		rec := events.PodRecord{UID: uid, Namespace: "default", Name: name, Host: host, Phase: events.PodPhaseRunning}
		for _, c := range containers {
			rec.Pod.Spec.Containers = append(rec.Pod.Spec.Containers, corev1.Container{Name: c, Image: "img"})
		}
		putRecord(t, ctx, b, events.BucketPods, events.PodRecordKey("default", name), rec)
	}
	host := sys.Datacenter.Hosts()[0].Name
	put("web", "uid-web", host, "first", "second")
	put("away", "uid-away", "esx-9-99", "app")

	channels, err := os.MkdirTemp("", "pvcli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(channels) })
	svc := guesttest.StartHostAgent(t, b, host, channels)

	g := guesttest.Dial(t, svc.Socket(), guestchannel.Hello{PodUID: "uid-web", Namespace: "default", Name: "web", BootID: "b1"}, "first", "second")
	g.SetLog("first", "hello\n")
	g.SetExec(func(req guestchannel.ExecRequest, stdin []byte) (string, int32) {
		switch strings.Join(req.Command, " ") {
		case "cat /data.txt":
			return "data\n", 0
		case "cat":
			return string(stdin), 0
		case "sh -c exit 3":
			return "", 3
		}
		return "", 127
	})
	// The agent is connected once its first report is out.
	eventually(t, "the guest's channel", func() bool {
		out, _, code := run(t, dir, "", "logs", "web", "-c", "first")
		return code == 0 && out == "hello\n"
	})

	for _, tc := range []struct {
		name     string
		stdin    string
		args     []string
		wantOut  string
		wantErr  string
		wantCode int
	}{
		{"logs of a container", "", []string{"logs", "web", "-c", "first"}, "hello\n", "", 0},
		{"logs needs -c with several containers", "", []string{"logs", "web"}, "", "first, second", 1},
		{"logs of an unknown container", "", []string{"logs", "web", "-c", "third"}, "", `no container "third"`, 1},
		{"logs of a missing pod", "", []string{"logs", "nope"}, "", "not found", 1},
		{"logs of a pod whose host has no agent", "", []string{"logs", "away"}, "", "esx-9-99", 1},
		{"exec prints the output", "", []string{"exec", "web", "-c", "first", "--", "cat", "/data.txt"}, "data\n", "", 0},
		{"exec passes the exit code through", "", []string{"exec", "web", "-c", "first", "--", "sh", "-c", "exit 3"}, "", "code 3", 3},
		{"exec -i streams stdin", "piped\nlines\n", []string{"exec", "-i", "web", "-c", "first", "--", "cat"}, "piped\nlines\n", "", 0},
		{"exec without a command", "", []string{"exec", "web"}, "", "", 2},
		{"exec without --", "", []string{"exec", "web", "cat"}, "", "--", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(t, dir, tc.stdin, tc.args...)
			if code != tc.wantCode || out != tc.wantOut || !strings.Contains(errOut, tc.wantErr) {
				t.Errorf("podvisor %s: exit %d, stdout %q, stderr %q; want exit %d, stdout %q, stderr containing %q",
					strings.Join(tc.args, " "), code, out, errOut, tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}

	t.Run("logs -f follows until interrupted", func(t *testing.T) {
		t.Setenv("PODVISOR_NATS_URL", "")
		var out, errb syncbuf.Buffer
		fctx, stop := context.WithCancel(ctx)
		exited := make(chan int, 1)
		go func() {
			exited <- Main(fctx, []string{"--state-dir", dir, "logs", "-f", "web", "-c", "first"}, strings.NewReader(""), &out, &errb)
		}()
		eventually(t, "the followed log", func() bool { return out.String() == "hello\n" })
		select {
		case code := <-exited:
			t.Fatalf("logs -f exited (%d) before it was interrupted: %s", code, errb.String())
		default:
		}
		stop()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("logs -f interrupted: exit %d (%s), want 0", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("logs -f did not end when interrupted")
		}
	})
}
