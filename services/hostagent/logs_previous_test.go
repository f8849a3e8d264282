package hostagent_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/agent/channel"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/logs"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/podstream"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// logs --previous of a container whose last state the pod's record carries
// from an earlier boot: an agent that keeps its logs across boots reads
// that boot's last instance when it ran on this VM's disk; when it has none
// the instance ran in an earlier pod VM (the pod's VM made again), and the
// host agent says so instead of the agent's bare "not found". It gives the
// agent's answer whenever the record cannot tell: no last state from an
// earlier boot, one of a start that failed (no log was written anywhere),
// or an agent that predates keeping its logs across boots (the earlier
// boot may have run on this very disk).
func TestLogsPreviousOfAnEarlierPodVM(t *testing.T) {
	e := newEnv(t)
	started := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	guestStopped := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 255, Reason: "Unknown",
		Message: "the pod VM's guest stopped while the container ran", StartedAt: started}}
	startError := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "StartError",
		Message: "overlay root: no such device", StartedAt: started, FinishedAt: started}}
	across := []string{guestchannel.CapLogsAcrossBoots}
	// notFound is the kubelet's answer, naming the container and the pod
	// (NAME: the test case's).
	const notFound = `previous terminated container "app" in pod default/NAME not found`
	for i, tc := range []struct {
		name string
		// carried is the last state the record carries from an earlier
		// boot (none when nil).
		carried *corev1.ContainerState
		caps    []string
		// earlierBoot is what an earlier boot of the agent left on the
		// disk ("": nothing).
		earlierBoot string
		want        string
		wantErr     string
	}{
		{name: "earlier pod VM", carried: &guestStopped, caps: across,
			wantErr: `the previous instance of container "app" ran in an earlier pod VM (its last state: Unknown, exit code 255: ` +
				"the pod VM's guest stopped while the container ran); its log is not kept"},
		{name: "earlier boot on this disk", carried: &guestStopped, caps: across, earlierBoot: "boot 1\n", want: "boot 1\n"},
		{name: "no earlier boot", caps: across, wantErr: notFound},
		{name: "a start that failed", carried: &startError, caps: across, wantErr: notFound},
		{name: "an agent that predates keeping logs across boots", carried: &guestStopped, wantErr: notFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, uid := "pod"+string(rune('a'+i)), "uid-"+string(rune('a'+i))
			rec := e.putPod(name, uid, host, 30, "app")
			rec.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}}}}
			if tc.carried != nil {
				// As the provisioner folds a new boot's report: the
				// carried last state stands as the container's.
				rec.ContainersBefore = map[string]events.CarriedContainer{"app": {Restarts: 1, LastState: *tc.carried}}
				rec.ContainerStatuses[0].RestartCount, rec.ContainerStatuses[0].LastTerminationState = 1, *tc.carried
			}
			data, _ := json.Marshal(rec)
			if _, err := e.pods.Put(context.Background(), events.PodRecordKey("default", name), data); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if tc.earlierBoot != "" {
				earlier, _ := logs.NewStore(dir, 1<<20)
				w, _ := earlier.Begin("app", 0)
				w.Write([]byte(tc.earlierBoot))
				w.Close()
			}
			store, err := logs.NewStore(dir, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			serveLogs(t, e, store, guestchannel.Hello{Protocol: guestchannel.Protocol, PodUID: uid, Namespace: "default", Name: name,
				BootID: "boot-2", Capabilities: tc.caps})
			e.waitReports(uid, 1)

			var out syncbuf.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err = podstream.Run(ctx, e.bus.Conn(), events.SubjectPodLogs(host),
				events.PodLogsRequest{Namespace: "default", Name: name, Previous: true}, nil, &out, &out)
			wantErr := strings.ReplaceAll(tc.wantErr, "NAME", name)
			if out.String() != tc.want || (err == nil) != (wantErr == "") || (err != nil && !strings.HasSuffix(err.Error(), wantErr)) {
				t.Errorf("logs --previous printed %q, error %v; want %q, error %q", out.String(), err, tc.want, wantErr)
			}
		})
	}
}

// serveLogs connects a pod agent greeting with hello whose app container's
// log is store's, with the agent's channel code.
func serveLogs(t *testing.T, e *env, store *logs.Store, hello guestchannel.Hello) *logPod {
	t.Helper()
	p := &logPod{store: store, opened: make(chan guestchannel.LogsRequest, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		(&channel.Server{Addr: "unix:" + e.svc.Socket(), Pod: p, MinRetry: 10 * time.Millisecond, Hello: hello}).Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-served })
	return p
}
