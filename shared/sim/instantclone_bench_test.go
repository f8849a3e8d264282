package sim_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/shared/simtest"
)

// BenchmarkGuestStartForkedVsCreated measures, on one simulated datacenter
// in one run, the time from the vSphere call to the pod's container
// running (reported by its agent over the guest channel) for a pod VM
// created and powered on (its guest formats its 8 GiB ephemeral disk, as
// the provisioner's default disk 0) against one instant-cloned from a
// running template of the same image (its disk cloned copy-on-write).
// It reports both p50s and their ratio:
//
//	go test -run '^$' -bench GuestStartForkedVsCreated -benchtime 8x ./shared/sim/
func BenchmarkGuestStartForkedVsCreated(b *testing.B) {
	agent := simtest.GuestAgent(b, "simulated guests run in namespaces and cgroups")
	image, err := os.ReadFile(simtest.BusyboxImage(b, []string{"sh", "echo", "sleep"}, nil))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	d, channels := simtest.StartWithGuests(b, 1, agent)
	host := d.Hosts()[0]
	agents := listenHostAgents(b, channels, host.Name)
	c := simtest.Client(b, d)
	chain := "sha256:" + strings.Repeat("e", 64)
	const ephemeral = 8 << 30
	disks := []simtest.PodVMDisk{{File: "ephemeral.vmdk", CapacityBytes: ephemeral}, {File: "image.vmdk", CapacityBytes: 16 << 20, ReadOnly: true}}

	template, extents := simtest.CreatePodVM(b, c, d, simtest.PodVM{Name: "pv-template", Host: host, NumCPUs: 1, MemoryMB: 256,
		Spec: forkSpec("uid-template", "template", chain), Disks: disks})
	if err := os.WriteFile(extents[1], image, 0o600); err != nil {
		b.Fatal(err)
	}
	powerOn(b, template)
	running(b, agents.next(b, "template"), "template")

	remove := func(vm *object.VirtualMachine) {
		if t, err := vm.PowerOff(ctx); err == nil {
			_ = t.Wait(ctx)
		}
		// A destroyed VM takes the files of its disks along: the image
		// disk it shares with the template is detached first, as the
		// provisioner does.
		devices, err := vm.Device(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var shared []types.BaseVirtualDevice
		for _, dev := range devices.SelectByType((*types.VirtualDisk)(nil)) {
			if bk, ok := dev.(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok &&
				bk.DiskMode == string(types.VirtualDiskModeIndependent_nonpersistent) {
				shared = append(shared, dev)
			}
		}
		if err := vm.RemoveDevice(ctx, true, shared...); err != nil {
			b.Fatal(err)
		}
		if t, err := vm.Destroy(ctx); err == nil {
			_ = t.Wait(ctx)
		}
	}
	var created, forked []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		name := fmt.Sprintf("created-%d", i)
		vm, ext := simtest.CreatePodVM(b, c, d, simtest.PodVM{Name: "pv-" + name, Host: host, NumCPUs: 1, MemoryMB: 256,
			Spec: forkSpec("uid-"+name, name, chain), Disks: disks})
		if err := os.WriteFile(ext[1], image, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		powerOn(b, vm)
		running(b, agents.next(b, name), name)
		created = append(created, time.Since(start))
		b.StopTimer()
		remove(vm)

		name = fmt.Sprintf("forked-%d", i)
		spec, err := guestchannel.MarshalSpec(forkSpec("uid-"+name, name, chain))
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start = time.Now()
		task, err := template.InstantClone(ctx, types.VirtualMachineInstantCloneSpec{Name: "pv-" + name,
			Config: []types.BaseOptionValue{&types.OptionValue{Key: guestchannel.GuestinfoSpec, Value: spec}}})
		if err != nil {
			b.Fatal(err)
		}
		info, err := task.WaitForResult(ctx, nil)
		if err != nil {
			b.Fatalf("instant clone %s: %v", name, faultReason(err))
		}
		running(b, agents.next(b, name), name)
		forked = append(forked, time.Since(start))
		b.StopTimer()
		remove(object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference)))
	}
	p50 := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	pc, pf := p50(created), p50(forked)
	b.ReportMetric(float64(pc.Milliseconds()), "created-p50-ms")
	b.ReportMetric(float64(pf.Milliseconds()), "forked-p50-ms")
	b.ReportMetric(float64(pc)/float64(pf), "created/forked")
	b.Logf("n=%d  created p50 %s  forked p50 %s  ratio %.2fx", len(created), pc.Round(time.Millisecond), pf.Round(time.Millisecond), float64(pc)/float64(pf))
}

// faultReason digs the reason out of a task's SystemError.
func faultReason(err error) string {
	var te task.Error
	if errors.As(err, &te) {
		if f, ok := te.Fault().(*types.SystemError); ok {
			return f.Reason
		}
	}
	return err.Error()
}

func powerOn(b testing.TB, vm *object.VirtualMachine) {
	b.Helper()
	task, err := vm.PowerOn(context.Background())
	if err != nil || task.Wait(context.Background()) != nil {
		b.Fatalf("power on: %v", err)
	}
}
