package nativevm_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

// env runs the controller against a bus, a simulated datacenter with
// guests and a registry holding the sample VM image. The test stands in
// for the scheduler and network-config.
type env struct {
	t   *testing.T
	bus *bus.Bus
	dc  *sim.Datacenter
	s   *vsphere.Session
	img string
	// reg serves img; a test may stop it (the registry moved).
	reg *ociregistry.Registry
	vms *record.Store[events.VMRecord]
	// deps and cfg made the running controller; a test may make more.
	ctl  *nativevm.Controller
	deps nativevm.Deps
	cfg  nativevm.Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, nil)
}

// newEnvWith is newEnv with tune applied to the controller's configuration
// (nil: the defaults).
func newEnvWith(t *testing.T, tune func(*nativevm.Config)) *env {
	t.Helper()
	privtest.Require(t, "native VMs boot in simulated guests (namespaces, loop mounts)")
	privtest.RequireTools(t, "mkfs.ext4", "busybox")
	ctx := context.Background()
	b := bustest.Start(t)
	base, err := os.MkdirTemp("", "pvn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	// Native guests boot their disk, not the pod VM agent; the manager
	// still wants a program for pod VMs, which this test makes none of.
	// pv-storage is the port group of a second network (storageNIC).
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2, Seed: 1, Dir: base, GuestsRequired: true,
		PortGroups: []sim.PortGroupSpec{{Name: "pv-default"}, {Name: "pv-storage"}},
		Guests:     &guest.Config{Agent: "/bin/true", ChannelDir: filepath.Join(base, "ch"), Dir: filepath.Join(base, "g"), StopGrace: 2 * time.Second}})
	s, err := vsphere.Connect(ctx, vsphere.Config{URL: d.URL().String(), Username: d.Username(), Password: d.Password(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	reg, err := ociregistry.Start(ctx, ociregistry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	img, err := ociregistry.SeedVMOS(ctx, reg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(tlog{t}, nil))
	cfg, deps := nativevm.Config{WorkDir: base}, nativevm.Deps{Bus: b, VSphere: s, Logger: log}
	if tune != nil {
		tune(&cfg)
	}
	c, err := nativevm.New(ctx, cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	t.Cleanup(func() { cancel(); <-done })
	kv, err := b.KV(ctx, events.BucketVMs)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, bus: b, dc: d, s: s, img: img, reg: reg, vms: record.New[events.VMRecord](kv, "vm"), ctl: c, deps: deps, cfg: cfg}
}

func (e *env) publish(source string, p events.Payload) { e.publishSeq(source, p) }

// publishSeq publishes p and returns the event and where the stream stored
// it (what a redelivery of it carries).
func (e *env) publishSeq(source string, p events.Payload) (event.Event, uint64) {
	e.t.Helper()
	ev := e.eventOf(source, p)
	seq, err := e.bus.PublishSeq(context.Background(), ev)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev, seq
}

// eventOf is p as source would publish it.
func (e *env) eventOf(source string, p events.Payload) event.Event {
	e.t.Helper()
	k, _ := events.KindOf(p)
	ev, err := bus.NewEvent(source, k.Type, p.ObjectKey(), p)
	if err != nil {
		e.t.Fatal(err)
	}
	return ev
}

func (e *env) waitRecord(what string, ok func(*events.VMRecord) bool) *events.VMRecord {
	e.t.Helper()
	return e.waitRecordOf("team-a", "vm1", what, ok)
}

func (e *env) waitRecordOf(namespace, name, what string, ok func(*events.VMRecord) bool) *events.VMRecord {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, _, err := e.vms.Get(context.Background(), events.VMRecordKey(namespace, name))
		if err != nil {
			e.t.Fatal(err)
		}
		if r != nil && ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: record %+v", what, r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitConsole waits until the native guest of VM ref has written every
// line of want on its console (the guest is looked up once: a VM that is
// moved or made again has another guest).
func (e *env) waitConsole(ref string, want ...string) string {
	e.t.Helper()
	g, ok := e.dc.Guests().Guest(ref)
	if !ok || g.VM.Native == nil {
		e.t.Fatal("no native guest runs")
	}
	// A loaded machine (the whole suite on two cores) can take a while
	// to run a guest's first shell lines.
	deadline := time.Now().Add(45 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(g.Dir, "console.log"))
		all := true
		for _, w := range want {
			all = all && strings.Contains(string(b), w)
		}
		if all {
			return string(b)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("guest console:\n%s\nwant %q", b, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// place stands in for the scheduler and network-config for a generation
// on the network default.
func (e *env) place(r *events.VMRecord, host sim.HostSpec) { e.placeWith(r, host, defaultNIC) }

// placeWith stands in for the scheduler and network-config for a
// generation whose networks network-config attached as nics.
func (e *env) placeWith(r *events.VMRecord, host sim.HostSpec, nics ...events.NetworkAttachment) {
	e.publish(events.OwnerSource(events.TypeVMScheduled), &events.VMScheduled{VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID},
		Generation: r.Generation, Host: host.Name, Cluster: host.Cluster})
	e.publish(events.OwnerSource(events.TypeVMNetworkAttached), &events.VMNetworkAttached{VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID},
		Generation: r.Generation, Host: host.Name, Attachments: nics})
}

// defaultNIC and storageNIC are network-config's attachments of the
// networks default and storage (port groups pv-default and pv-storage).
var (
	defaultNIC = events.NetworkAttachment{Network: "default", PortGroup: "pv-default",
		IP: "10.244.0.7", PrefixLength: 16, Gateway: "10.244.0.1", MAC: "00:50:56:3f:00:07"}
	storageNIC = events.NetworkAttachment{Network: "storage", PortGroup: "pv-storage",
		IP: "10.245.0.9", PrefixLength: 24, MAC: "00:50:56:3f:00:09"}
)

func vmDecl(class, power string) *events.VMDeclared {
	return &events.VMDeclared{VM: events.VirtualMachine{
		Metadata: events.NamespacedMeta{Name: "vm1", Namespace: "team-a"},
		Spec: events.VirtualMachineSpec{ClassName: class, ImageName: "vmos", PowerState: power,
			UserData: "#cloud-config\nwrite_files:\n- path: /var/lib/hello\n  content: hello from cloud-config\n"},
	}}
}

// declareClass and declareImage publish a VM class and the image vmos
// (the one vmDecl names) as a user would.
func (e *env) declareClass(name string, spec events.VirtualMachineClassSpec) {
	e.t.Helper()
	e.publish("podvisor/cli", &events.VMClassDeclared{Class: events.VirtualMachineClass{Metadata: events.Meta{Name: name}, Spec: spec}})
}

func (e *env) declareImage(spec events.VirtualMachineImageSpec) {
	e.t.Helper()
	e.publish("podvisor/cli", &events.VMImageDeclared{Image: events.VirtualMachineImage{Metadata: events.Meta{Name: "vmos"}, Spec: spec}})
}

// declareSmall declares what the drift-repair tests run: the class small
// (1 CPU, 1 GiB) and the image vmos from the env's registry.
func (e *env) declareSmall() {
	e.t.Helper()
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 1, Memory: "1Gi"})
	e.declareImage(events.VirtualMachineImageSpec{OCI: e.img})
}

// runOn publishes decl, the VM's first generation, places it on host and
// waits until the VM is Ready and powered on.
func (e *env) runOn(decl *events.VMDeclared, host sim.HostSpec) *events.VMRecord {
	e.t.Helper()
	e.publish("podvisor/cli", decl)
	ns, name := decl.VM.Metadata.Namespace, decl.VM.Metadata.Name
	r := e.waitRecordOf(ns, name, "accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	e.place(r, host)
	return e.waitRecordOf(ns, name, "Ready and PoweredOn", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn
	})
}

// vm is the VM of record r in vCenter, found in its namespace's folder.
func (e *env) vm(r *events.VMRecord) *object.VirtualMachine {
	e.t.Helper()
	vm, err := find.NewFinder(e.s.Vim(), true).VirtualMachine(context.Background(), "/*/vm/podvisor-vms/team-a/"+events.NativeVMName(r.UID))
	if err != nil {
		e.t.Fatalf("VM %s is not in its folder: %v", events.NativeVMName(r.UID), err)
	}
	return vm
}

// powerOff powers vm off behind the controller's back (as a user in
// vCenter would) and waits for the task, failing the test if either fails.
func (e *env) powerOff(vm *object.VirtualMachine) {
	e.t.Helper()
	ctx := context.Background()
	task, err := vm.PowerOff(ctx)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		e.t.Fatalf("power off %s: %v", vm.Reference().Value, err)
	}
}

func TestVMLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	client := "podvisor/cli"
	// A VM whose class does not exist is refused, naming the field.
	e.publish(client, vmDecl("small", ""))
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 2, Memory: "4Gi", Reservations: events.VMReservations{CPUMHz: 500}})
	e.declareClass("big", events.VirtualMachineClassSpec{CPUs: 4, Memory: "8Gi"})
	e.declareImage(events.VirtualMachineImageSpec{OCI: e.img})
	e.publish(client, vmDecl("small", ""))
	r := e.waitRecord("accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	if r.Size.CPUs != 2 || r.Size.MemoryMiB != 4096 || r.Spec.PowerState != events.PowerStatePoweredOn || r.Spec.Networks[0] != "default" {
		t.Fatalf("record %+v: want class small compiled and defaults applied", r)
	}
	hosts := e.dc.Hosts()
	e.place(r, hosts[0])
	r = e.waitRecord("Ready and PoweredOn", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn
	})
	if r.Status.Host != hosts[0].Name || len(r.Status.IPs) != 1 || r.Status.IPs[0] != "10.244.0.7" {
		t.Errorf("status %+v: want host %s and the attached IP", r.Status, hosts[0].Name)
	}
	vm := e.vm(r)
	read := func() mo.VirtualMachine {
		var m mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"config", "runtime"}, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := read()
	if m.Config.Hardware.NumCPU != 2 || m.Config.Hardware.MemoryMB != 4096 || *m.Config.CpuAllocation.Reservation != 500 {
		t.Errorf("vCenter: %d vCPU, %d MB, cpu reservation %d; want 2, 4096, 500", m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB, *m.Config.CpuAllocation.Reservation)
	}
	info := map[string]string{}
	for _, o := range m.Config.ExtraConfig {
		v := o.GetOptionValue()
		info[v.Key], _ = v.Value.(string)
	}
	if info[nativevm.GuestinfoUserDataEncoding] != "base64" || info[nativevm.GuestinfoMetadataEncoding] != "base64" || info[nativevm.GuestinfoUserData] == "" {
		t.Errorf("guestinfo %v: want base64 user data and metadata (VMware datasource encoding)", info)
	}
	e.waitConsole(vm.Reference().Value, "cloud-config applied", "init: eth0 10.244.0.7/16")

	// Resize: a new generation; placed again, the VM is powered off,
	// resized and powered on.
	e.publish(client, vmDecl("big", ""))
	r = e.waitRecord("generation 2", func(r *events.VMRecord) bool { return r.Generation == 2 })
	e.place(r, hosts[0])
	e.waitRecord("resized", func(r *events.VMRecord) bool {
		return r.Status.Size.CPUs == 4 && r.Status.PowerState == events.PowerStatePoweredOn && r.Status.Phase == events.VMPhaseReady
	})
	if m := read(); m.Config.Hardware.NumCPU != 4 || m.Config.Hardware.MemoryMB != 8192 {
		t.Errorf("vCenter after resize: %d vCPU, %d MB", m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB)
	}

	// Power off by declaration.
	e.publish(client, vmDecl("big", events.PowerStatePoweredOff))
	r = e.waitRecord("generation 3", func(r *events.VMRecord) bool { return r.Generation == 3 })
	e.place(r, hosts[0])
	e.waitRecord("powered off", func(r *events.VMRecord) bool { return r.Status.PowerState == events.PowerStatePoweredOff })
	if read().Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		t.Error("vCenter does not report the VM powered off")
	}

	// Delete: the VM is gone from vCenter and the record removed.
	e.publish(client, &events.VMDeleteRequested{Namespace: "team-a", Name: "vm1"})
	e.waitGone("team-a", "vm1")
	if _, err := find.NewFinder(e.s.Vim(), true).VirtualMachine(ctx, "/*/vm/podvisor-vms/team-a/"+events.NativeVMName(r.UID)); err == nil {
		t.Error("the VM is still in vCenter after the delete")
	}
}

// Drift repair: a VM vCenter lost (removed from its inventory, or a
// vCenter rebuilt from nothing, its files left on the datastore) is made
// again on its host from its spec, with the disks it left, and its record
// says so; one powered off behind its back is powered on again, as
// declared. A second pass finds nothing.
func TestResyncRepairsLostAndPoweredOffVMs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, host, r := e.runWithDataDisk()
	lost := e.vm(r)
	e.powerOff(lost)
	if err := lost.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	repaired, err := e.ctl.Resync(ctx)
	if err != nil || repaired[nativevm.RepairMissing] != 1 {
		t.Fatalf("Resync = %v, %v; want the lost VM made again", repaired, err)
	}
	r = e.waitRecord("made again", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.VM != lost.Reference().Value
	})
	again := e.vm(r)
	if st, err := again.PowerState(ctx); err != nil || st != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the VM made again: %s, %v; want poweredOn", st, err)
	}
	if r.Status.Host != host.Name || r.Status.PowerState != events.PowerStatePoweredOn {
		t.Errorf("status after the repair: %+v", r.Status)
	}

	e.powerOff(again)
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairPower] != 1 {
		t.Fatalf("Resync = %v, %v; want the VM powered on again", repaired, err)
	}
	if st, err := again.PowerState(ctx); err != nil || st != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("after the power repair: %s, %v; want poweredOn", st, err)
	}
	if repaired, err := e.ctl.Resync(ctx); err != nil || len(repaired) != 0 {
		t.Errorf("a second pass: %v, %v; want nothing to repair", repaired, err)
	}
}

// TestAPassClaimsEveryLostVMBeforeMakingAny: of several VMs a vCenter lost,
// every record says so (Creating, Created False VMMissing) before the
// first is made again: none goes on claiming Ready meanwhile. The bucket's
// updates, watched in order, show every claim before the first record of
// a VM made again.
func TestAPassClaimsEveryLostVMBeforeMakingAny(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	lost := map[string]string{} // record key → its VM's reference before
	for _, name := range []string{"vm1", "vm2"} {
		decl := vmDecl("small", "")
		decl.VM.Metadata.Name = name
		r := e.runOn(decl, e.dc.Hosts()[0])
		vm := e.vm(r)
		e.powerOff(vm)
		if err := vm.Unregister(ctx); err != nil {
			t.Fatal(err)
		}
		lost[events.VMRecordKey(r.Namespace, r.Name)] = vm.Reference().Value
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	changes, err := e.vms.Watch(wctx, ">", func(err error) { t.Errorf("watch: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairMissing] != len(lost) {
		t.Fatalf("Resync = %v, %v; want %d VMs made again", repaired, err, len(lost))
	}
	var order []string // "claim <key>" or "made <key>", in revision order
	claimed, made := map[string]bool{}, map[string]bool{}
	for len(made) < len(lost) {
		select {
		case c := <-changes:
			before, ok := lost[c.Key]
			if !ok || c.Value == nil || c.Initial {
				continue
			}
			switch {
			case c.Value.Status.Phase == events.VMPhaseCreating && !claimed[c.Key]:
				claimed[c.Key] = true
				order = append(order, "claim "+c.Key)
			case claimed[c.Key] && c.Value.Status.Phase == events.VMPhaseReady && c.Value.Status.VM != before && !made[c.Key]:
				made[c.Key] = true
				order = append(order, "made "+c.Key)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("the records did not all name a VM made again; seen: %v", order)
		}
	}
	for i, step := range order {
		if strings.HasPrefix(step, "made ") && i < len(lost) {
			t.Fatalf("a VM was made again before every lost VM's record said so: %v", order)
		}
	}
}

// TestAFailedPowerRepairIsTakenUpAgain: vCenter refuses to power a VM on
// when a pass repairs its power state; the record is left Updating. Once
// it has said so for longer than a handler's delivery may take (AckWait),
// a pass takes it up again and the VM is on.
func TestAFailedPowerRepairIsTakenUpAgain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	r := e.runOn(vmDecl("small", ""), e.dc.Hosts()[0])
	vm := e.vm(r)
	e.powerOff(vm)
	simtest.Fault(t, e.dc, simulator.FaultInjectionRule{MethodName: "PowerOnVM_Task", Probability: 1})
	if repaired, err := e.ctl.Resync(ctx); err == nil || len(repaired) != 0 {
		t.Fatalf("first pass = %v, %v; want the power repair failed and not counted", repaired, err)
	}
	e.dc.ClearFaults()
	// A controller whose handlers' deliveries end at once: the record has
	// said Updating for longer than that.
	cfg := e.cfg
	cfg.AckWait = time.Nanosecond
	ctl, err := nativevm.New(ctx, cfg, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	if repaired, err := ctl.Resync(ctx); err != nil || repaired[nativevm.RepairPower] != 1 {
		t.Fatalf("a later pass = %v, %v; want the power state repaired", repaired, err)
	}
	if st, err := vm.PowerState(ctx); err != nil || st != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("VM %s, %v; want poweredOn", st, err)
	}
}

// The reference of the VM an eviction left behind may name another VM by
// the time the VM is made again (a vCenter rebuilt from nothing numbers
// its VMs from the start again): that VM is left alone.
func TestAStaleReferenceToAnotherVMIsNotRemoved(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	hosts := e.dc.Hosts()
	r := e.runOn(vmDecl("small", ""), hosts[0])
	// The VM is gone from the rebuilt vCenter; its reference names
	// another VM there.
	gone := e.vm(r)
	e.powerOff(gone)
	if task, err := gone.Destroy(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("destroy: %v", err)
	}
	hs, err := e.dc.Host(hosts[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	bystander, _, err := simtest.NewPodVM(ctx, e.s.Client, e.dc, simtest.PodVM{Name: "bystander", Host: hs, NumCPUs: 1, MemoryMB: 128, PowerOn: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.vms.Mutate(ctx, events.VMRecordKey(r.Namespace, r.Name), func(r *events.VMRecord) error {
		r.Status.VM = bystander.Reference().Value
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.publish(events.OwnerSource(events.TypeVMEvicted), &events.VMEvicted{VMRef: events.VMRef{Namespace: r.Namespace, Name: r.Name, UID: r.UID},
		Host: hosts[0].Name, Reason: "HostLost"})
	r = e.waitRecord("evicted", func(r *events.VMRecord) bool { return r.StaleVM == bystander.Reference().Value })
	e.place(r, hosts[1])
	e.waitRecord("made again on the other host", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.Host == hosts[1].Name && r.StaleVM == ""
	})
	if st, err := bystander.PowerState(ctx); err != nil || st != types.VirtualMachinePowerStatePoweredOn {
		t.Errorf("the other VM the stale reference named: %s, %v; want it left on", st, err)
	}
}
