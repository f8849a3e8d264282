package provisioner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A provisioner stops dead between vCenter accepting CreateVM and the save
// of the task's reference (the record says a create was attempted, not
// which task), while the create is still running in vCenter. Another
// provisioner takes the pod over: its own create of the same VM name loses
// to the first (or finds it by name) and it adopts that VM rather than
// failing the pod, so the pod ends with exactly one VM, Running.
func TestProvisionerKilledBeforeTaskSaveLeavesOneVM(t *testing.T) {
	e := newEnv(t)
	// The first create stays in flight while the second provisioner takes
	// the pod over (redelivery after AckWait).
	if err := e.DC.SetTaskDelay("CreateVm", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	first, stopFirst := e.start(cfg)
	var once sync.Once
	submitted := make(chan struct{})
	first.hooks.afterCreateSubmit = func(context.Context, *events.PodRecord) error {
		once.Do(func() {
			close(submitted)
			go stopFirst()
		})
		// The process is dying: it saves nothing more, whatever it is
		// handed before it is gone.
		return errors.New("killed after CreateVM was submitted")
	}
	acc := e.request(testPod("killed-mid-create"))
	e.facts(acc, e.DC.Hosts()[0].Name)
	select {
	case <-submitted:
	case <-time.After(15 * time.Second):
		t.Fatal("the first provisioner never submitted CreateVM")
	}
	stopFirst() // returns once the stop begun in the hook is done
	if r := e.record(first, acc.Namespace, acc.Name); r.CreateTask != "" || r.CreateAttempts != 1 {
		t.Fatalf("record after the kill: task %q, attempts %d; want no task and one attempt", r.CreateTask, r.CreateAttempts)
	}
	if err := e.DC.SetTaskDelay("CreateVm", 0); err != nil {
		t.Fatal(err)
	}

	second, _ := e.start(cfg)
	ready := testenv.Wait(e.Env, func(p *events.PodVMReady) bool { return p.UID == acc.UID })
	starting := e.waitRecord(second, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r.Phase == events.PodPhaseStarting })
	r := e.fold(second, report(acc, starting.VMName, "boot-1", 1, running("app"), running("sidecar"), running("logger")))
	if r.Phase != events.PodPhaseRunning {
		t.Fatalf("phase %s (%s: %s), want Running", r.Phase, r.Reason, r.Message)
	}
	vms, err := e.vms.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, v := range vms {
		if v.UID == acc.UID {
			mine = append(mine, v.Ref.Value)
		}
	}
	if len(mine) != 1 || mine[0] != ready.VM || r.VMRef != ready.VM {
		t.Fatalf("VMs of the pod: %v; pod.vm.ready names %s, the record %s: want exactly that one", mine, ready.VM, r.VMRef)
	}
}

// A provisioner folds a fact into the record as it last wrote it, without
// reading it first. Another replica writes the record meanwhile (here: a
// message it set): the fold loses its compare-and-set and is made again on
// the stored record, so the pod keeps both the other writer's change and
// the fact.
func TestFactFoldedIntoWhatAnotherReplicaWrote(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	acc := e.request(testPod("two-writers"))
	if kept, err := svc.recs.lastWritten(events.PodRecordKey(acc.Namespace, acc.Name)); err != nil || kept == nil || kept.UID != acc.UID {
		t.Fatalf("admission's write kept: %+v, %v; want the record of uid %s", kept, err, acc.UID)
	}
	// The other replica's write, straight to the bucket at the current
	// revision (this process keeps the revision before it).
	other := e.record(svc, acc.Namespace, acc.Name)
	other.Message = "written by the other replica"
	b, err := encodeRecord(other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.recs.kv.Update(context.Background(), events.PodRecordKey(acc.Namespace, acc.Name), b, other.ResourceVersion); err != nil {
		t.Fatal(err)
	}
	host := e.DC.Hosts()[0].Name
	hs, err := e.DC.Host(host)
	if err != nil {
		t.Fatal(err)
	}
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: hs.Cluster,
	})
	r := e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r.Host == host })
	if r.Message != other.Message || r.ResourceVersion <= other.ResourceVersion {
		t.Fatalf("record after the fact: message %q at revision %d; want the other replica's %q kept and a later revision than %d",
			r.Message, r.ResourceVersion, other.Message, other.ResourceVersion)
	}
}
