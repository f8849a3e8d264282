package provisioner

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
)

// What the restart counts say across the guest's boots, folded one report
// at a time as the handler does (stale reports skipped). Each report is
// published at second `at`; the order they are folded in is the list's.
func TestRestartsCarriedAcrossBoots(t *testing.T) {
	firstCrash := waiting("app", "CrashLoopBackOff", 0)
	firstCrash.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}
	type report struct {
		boot string
		seq  uint64
		at   int
		cs   corev1.ContainerStatus
	}
	run := running("app")
	for _, tt := range []struct {
		name       string
		reports    []report
		forget     int // forgetGuest (the VM replaced) before this report (1-based; 0: never)
		want       int32
		wantLast   string // "": no last state
		wantBootID string
	}{
		{"ran, never started in the next boot, ran again", []report{
			{"b1", 1, 1, run}, {"b2", 1, 2, waiting("app", "ContainerCreating", 0)}, {"b3", 1, 3, run},
		}, 0, 1, reasonGuestRestarted, "b3"},
		{"a late report of a replaced boot", []report{
			{"b1", 5, 2, run}, {"b2", 1, 3, run}, {"b1", 4, 1, run}, {"b2", 2, 4, run},
		}, 0, 1, reasonGuestRestarted, "b2"},
		{"in back-off after its first crash, then a reboot", []report{
			{"b1", 1, 1, firstCrash}, {"b2", 1, 2, run},
		}, 0, 1, "OOMKilled", "b2"},
		{"the VM re-created, then a late report of its old guest", []report{
			{"b1", 1, 1, run}, {"b1", 2, 2, run}, {"b2", 1, 3, run},
		}, 2, 1, reasonGuestRestarted, "b2"},
		{"a late report of a boot never folded, between two others", []report{
			{"b1", 1, 1, run}, {"b3", 1, 3, run}, {"b2", 1, 2, waiting("app", "ContainerCreating", 0)}, {"b3", 2, 4, run},
		}, 0, 1, reasonGuestRestarted, "b3"},
		{"the VM found under another reference, its guest going on", []report{
			{"b1", 1, 1, run}, {"b1", 2, 2, run}, {"b1", 3, 3, run},
		}, 2, 0, "", "b1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &Service{now: time.Now}
			r := &events.PodRecord{VMName: "vm", VMRef: "vm-1", Phase: events.PodPhaseRunning}
			epoch := time.Now()
			for i, rp := range tt.reports {
				if i+1 == tt.forget {
					r.VMRef = "vm-2" // the VM replaced, or found under a new reference
					forgetGuest(r, time.Now())
				}
				p := &events.PodContainersReported{VM: r.VMName, BootID: rp.boot, Seq: rp.seq, Phase: events.GuestPhaseRunning,
					ContainerStatuses: []corev1.ContainerStatus{rp.cs}}
				published := epoch.Add(time.Duration(rp.at) * time.Second)
				if staleReport(r, p, published) == "" {
					s.foldReport(r, p, published)
				}
			}
			cs := r.ContainerStatuses[0]
			last := cs.LastTerminationState.Terminated
			if cs.RestartCount != tt.want || (tt.wantLast == "") != (last == nil) || (last != nil && last.Reason != tt.wantLast) {
				t.Errorf("restartCount %d lastState %+v; want %d and %q", cs.RestartCount, cs.LastTerminationState, tt.want, tt.wantLast)
			}
			if r.Guest.BootID != tt.wantBootID {
				t.Errorf("the record folds boot %s's reports, want %s's", r.Guest.BootID, tt.wantBootID)
			}
		})
	}
}
