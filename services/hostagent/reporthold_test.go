package hostagent_test

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/testenv"
)

// rawGuest says hello on the host agent's socket and returns the channel,
// with no status sent yet.
func rawGuest(t *testing.T, socket string, hello guestchannel.Hello) *guestchannel.Conn {
	t.Helper()
	var c net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err = net.Dial("unix", socket); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	conn := guestchannel.NewConn(c)
	t.Cleanup(func() { conn.Close() })
	hello.Protocol = guestchannel.Protocol
	if err := conn.Send(guestchannel.TypeHello, "", hello); err != nil {
		t.Fatal(err)
	}
	return conn
}

// hold is the tests' ReportHold (off by default).
const hold = time.Second

func withHold(c *hostagent.Config) { c.ReportHold = hold }

var creating = guestchannel.ContainerStatus{Name: "app", State: guestchannel.ContainerState{Kind: guestchannel.StateWaiting, Reason: "ContainerCreating"}}

// creatingGuest starts a host agent with the hold and pod name (uid-name)
// on it, and connects the pod's guest, whose first status says its
// container is being created. It returns the agent, the guest's channel
// and when that status was sent (when its hold began).
func creatingGuest(t *testing.T, name string) (*env, *guestchannel.Conn, time.Time) {
	t.Helper()
	e := newEnv(t, withHold)
	uid := "uid-" + name
	e.putPod(name, uid, host, 30, "app")
	conn := rawGuest(t, e.svc.Socket(), guestchannel.Hello{PodUID: uid, Namespace: "default", Name: name, BootID: "boot-1"})
	sent := time.Now()
	if err := conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Full: true, Seq: 1, Phase: guestchannel.PhasePending, Containers: []guestchannel.ContainerStatus{creating}}); err != nil {
		t.Fatal(err)
	}
	return e, conn, sent
}

// An agent's first status, sent at hello before any container started,
// says only what the record already assumes: when the containers start
// within the hold, that status costs no report of its own (one event and
// one record write fewer per pod); the report that says they run is
// published at once.
func TestReportOfContainersBeingCreatedIsReplacedByANewerOne(t *testing.T) {
	e, conn, heldAt := creatingGuest(t, "web")
	// The container takes a while to start (well within the hold): long
	// enough for a report of the first status to go out if it were not
	// held.
	time.Sleep(300 * time.Millisecond)
	now := time.Now().UTC().Truncate(time.Second)
	running := guestchannel.ContainerStatus{Name: "app", Started: true, Ready: true, State: guestchannel.ContainerState{Kind: guestchannel.StateRunning, StartedAt: &now}}
	if err := conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Seq: 2, Phase: guestchannel.PhaseRunning, Containers: []guestchannel.ContainerStatus{running}}); err != nil {
		t.Fatal(err)
	}
	first := e.waitReports("uid-web", 1)[0]
	if first.r.Seq != 2 || first.r.ContainerStatuses[0].State.Running == nil {
		t.Fatalf("first report = seq %d %+v, want seq 2 with app running", first.r.Seq, first.r.ContainerStatuses)
	}
	if first.id != hostagent.ReportID("uid-web", "boot-1", 2) {
		t.Errorf("report id %s, want the id of seq 2", first.id)
	}
	// Past the hold's end, the guest says something new (its container
	// no longer ready): once that report is out, everything the channel
	// had to publish before it is out too (one loop publishes a channel's
	// reports in order), and the held report was not among them.
	if wait := time.Until(heldAt.Add(hold)); wait > 0 {
		time.Sleep(wait)
	}
	unready := running
	unready.Ready = false
	if err := conn.Send(guestchannel.TypeStatus, "", guestchannel.Status{Seq: 3, Phase: guestchannel.PhaseRunning, Containers: []guestchannel.ContainerStatus{unready}}); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	testenv.Eventually(t, "the report of seq 3", 10*time.Second, func() bool {
		seqs = seqs[:0]
		for _, r := range e.reported("uid-web") {
			seqs = append(seqs, r.r.Seq)
		}
		return slices.Contains(seqs, 3)
	})
	if !slices.Equal(seqs, []uint64{2, 3}) {
		t.Errorf("reports of seq %v, want 2 then 3 (the creating one replaced, never published)", seqs)
	}
}

// A guest whose containers do not start within the hold is still
// reported: the report of containers being created is published once the
// hold ends, so the provisioner hears from the guest.
func TestReportOfContainersBeingCreatedIsPublishedAfterTheHold(t *testing.T) {
	e, _, sent := creatingGuest(t, "slow")
	r := e.waitReports("uid-slow", 1)[0]
	if r.r.Seq != 1 || r.r.ContainerStatuses[0].State.Waiting == nil {
		t.Fatalf("report = seq %d %+v, want seq 1, app waiting", r.r.Seq, r.r.ContainerStatuses)
	}
	if d := time.Since(sent); d > 5*time.Second {
		t.Errorf("the report came %s after the status, want about the hold (%s)", d, hold)
	}
}
