package nativevm_test

import (
	"context"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
)

// TestVMsAreMadeAgainAfterTheRegistryMoved: a VM's record keeps the digest
// its image reference resolved to, and once the registry is gone (a
// `podvisor up` on another port leaves the references of accepted VMs
// pointing nowhere) drift repair makes lost VMs again from the image disk
// of that digest: one that left its boot disk keeps it, one whose files
// went gets a fresh copy of the image's disk, and both boot it. A
// declaration that changes the reference drops the digest of the old one.
func TestVMsAreMadeAgainAfterTheRegistryMoved(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	ref, err := name.ParseReference(e.img)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	host := e.dc.Hosts()[0]
	recs := map[string]*events.VMRecord{}
	for _, n := range []string{"kept", "gone"} {
		decl := vmDecl("small", "")
		decl.VM.Metadata.Name = n
		r := e.runOn(decl, host)
		if r.ImageDigest != desc.Digest.String() {
			t.Fatalf("VM %s: ImageDigest %q; want %s, the digest of %s", n, r.ImageDigest, desc.Digest, e.img)
		}
		recs[n] = r
	}

	boot, _ := e.disks(e.vm(recs["kept"]))
	bootBytes := boot["root.vmdk"].Capacity

	e.reg.Close()
	// vCenter loses both: kept is unregistered (its files stay), gone is
	// destroyed (its boot disk with it).
	kept, gone := e.vm(recs["kept"]), e.vm(recs["gone"])
	e.powerOff(kept)
	if err := kept.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	e.powerOff(gone)
	if task, err := gone.Destroy(ctx); err != nil || task.Wait(ctx) != nil {
		t.Fatalf("destroy %s: %v", gone.Reference().Value, err)
	}
	store, err := find.NewFinder(e.s.Vim()).SetDatacenter(e.s.Datacenter).Datastore(ctx, recs["gone"].Status.Datastores[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stat(ctx, events.NativeVMName(recs["gone"].UID)+"/root.vmdk"); err == nil {
		t.Fatal("the destroyed VM's boot disk is still on the datastore")
	}

	repaired, err := e.ctl.Resync(ctx)
	if err != nil || repaired[nativevm.RepairMissing] != 2 {
		t.Fatalf("Resync = %v, %v; want both lost VMs made again without the registry", repaired, err)
	}
	for n, before := range map[string]*object.VirtualMachine{"kept": kept, "gone": gone} {
		r := e.waitRecordOf("team-a", n, "made again", func(r *events.VMRecord) bool {
			return r.Status.Phase == events.VMPhaseReady && r.Status.VM != before.Reference().Value
		})
		vm := e.vm(r)
		e.wantDisks(vm, r, map[string]vmDisk{"root.vmdk": {Unit: 0, Capacity: bootBytes}})
		e.waitConsole(vm.Reference().Value, "init: ready")
	}

	// A new declaration of another reference: the digest of the old one
	// is not the new image's.
	e.publish("podvisor/cli", &events.VMImageDeclared{Image: events.VirtualMachineImage{Metadata: events.Meta{Name: "vmos2"},
		Spec: events.VirtualMachineImageSpec{OCI: "127.0.0.1:1/vm/other:1"}}})
	decl := vmDecl("small", "")
	decl.VM.Metadata.Name, decl.VM.Spec.ImageName = "kept", "vmos2"
	e.publish("podvisor/cli", decl)
	r := e.waitRecordOf("team-a", "kept", "generation 2", func(r *events.VMRecord) bool { return r.Generation == 2 })
	if r.Image.OCI != "127.0.0.1:1/vm/other:1" || r.ImageDigest != "" {
		t.Errorf("after a declaration of another image: Image.OCI %q, ImageDigest %q; want the new reference and no digest", r.Image.OCI, r.ImageDigest)
	}
}
