package sim_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
)

// As on vCenter, a VM whose host does not respond can be neither powered
// off nor destroyed (vcsim alone would delete its files), only removed
// from the inventory, which leaves its files on the datastore; once the
// host is back the VM's host methods work again.
func TestAVMOnAHostDownIsOnlyUnregistered(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 2})
	c := client(t, d)
	ctx := context.Background()
	hosts := d.Hosts()
	kept := createVM(t, c, d, hosts[0], "kept")
	if task, err := kept.PowerOn(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	again := createVM(t, c, d, hosts[0], "again")
	ds, err := d.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	vmx := filepath.Join(ds.Dir, "kept", "kept.vmx")
	if _, err := os.Stat(vmx); err != nil {
		t.Fatalf("the VM's configuration file: %v", err)
	}

	if err := d.FailHost(ctx, hosts[0].Name); err != nil {
		t.Fatal(err)
	}
	refused := func(what string, err error) {
		t.Helper()
		if err == nil || !fault.Is(err, &types.InvalidHostConnectionState{}) {
			t.Errorf("%s on a host down: %v, want InvalidHostConnectionState", what, err)
		}
	}
	_, err = kept.Destroy(ctx)
	refused("Destroy_Task", err)
	_, err = kept.PowerOn(ctx)
	refused("PowerOnVM_Task", err)
	_, err = kept.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &hosts[1].Ref}, types.VirtualMachineMovePriorityDefaultPriority)
	refused("RelocateVM_Task", err)
	if err := kept.Unregister(ctx); err != nil {
		t.Fatalf("UnregisterVM of a powered-on VM on a host down: %v", err)
	}
	if _, err := os.Stat(vmx); err != nil {
		t.Errorf("an unregistered VM's files stay: %v", err)
	}

	if err := d.RecoverHost(ctx, hosts[0].Name); err != nil {
		t.Fatal(err)
	}
	task, err := again.Destroy(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		t.Errorf("Destroy_Task once the host is back: %v", err)
	}
}
