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
	if err := e.dc.SetTaskDelay("CreateVm", 3*time.Second); err != nil {
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
	e.facts(acc, e.dc.Hosts()[0].Name)
	select {
	case <-submitted:
	case <-time.After(15 * time.Second):
		t.Fatal("the first provisioner never submitted CreateVM")
	}
	stopFirst() // returns once the stop begun in the hook is done
	if r := e.record(first, acc.Namespace, acc.Name); r.CreateTask != "" || r.CreateAttempts != 1 {
		t.Fatalf("record after the kill: task %q, attempts %d; want no task and one attempt", r.CreateTask, r.CreateAttempts)
	}
	if err := e.dc.SetTaskDelay("CreateVm", 0); err != nil {
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
