package provisioner

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
)

// What the restart counts say across the guest's boots, folded one report
// at a time as the handler does (stale reports skipped).
func TestRestartsCarriedAcrossBoots(t *testing.T) {
	firstCrash := waiting("app", "CrashLoopBackOff", 0)
	firstCrash.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}
	type report struct {
		boot string
		seq  uint64
		cs   corev1.ContainerStatus
	}
	for _, tt := range []struct {
		name     string
		reports  []report
		forget   int // forgetGuest (the VM re-created) before this report (1-based; 0: never)
		want     int32
		wantLast string
	}{
		{"ran, never started in the next boot, ran again", []report{
			{"b1", 1, running("app")}, {"b2", 1, waiting("app", "ContainerCreating", 0)}, {"b3", 1, running("app")},
		}, 0, 1, reasonGuestRestarted},
		{"a late report of a replaced boot", []report{
			{"b1", 5, running("app")}, {"b2", 1, running("app")}, {"b1", 4, running("app")}, {"b2", 2, running("app")},
		}, 0, 1, reasonGuestRestarted},
		{"in back-off after its first crash, then a reboot", []report{
			{"b1", 1, firstCrash}, {"b2", 1, running("app")},
		}, 0, 1, "OOMKilled"},
		{"the VM re-created, then a late report of its old guest", []report{
			{"b1", 1, running("app")}, {"b1", 2, running("app")}, {"b2", 1, running("app")},
		}, 2, 1, reasonGuestRestarted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &Service{now: time.Now}
			r := &events.PodRecord{VMName: "vm", Phase: events.PodPhaseRunning}
			for i, rp := range tt.reports {
				if i+1 == tt.forget {
					forgetGuest(r)
				}
				p := &events.PodContainersReported{VM: r.VMName, BootID: rp.boot, Seq: rp.seq, Phase: events.GuestPhaseRunning,
					ContainerStatuses: []corev1.ContainerStatus{rp.cs}}
				if staleReport(r, p) == "" {
					s.foldReport(r, p)
				}
			}
			cs := r.ContainerStatuses[0]
			last := cs.LastTerminationState.Terminated
			if cs.RestartCount != tt.want || last == nil || last.Reason != tt.wantLast {
				t.Errorf("restartCount %d lastState %+v; want %d and %s", cs.RestartCount, cs.LastTerminationState, tt.want, tt.wantLast)
			}
		})
	}
}
