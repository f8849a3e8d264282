package nativevm_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/record"
)

// movedPage is what another web server on the registry's old address
// answers once the registry moved.
const movedPage = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\">\n<html><head><title>Error response</title></head>\n" +
	"<body><h1>Error response</h1><p>Error code: 404</p><p>Message: File not found.</p></body></html>\n"

// TestAGivenUpCreateFailsThenDriftRepairMakesIt: the registry's address
// answers 404 with a web page (the registry moved) while a VM is made. The
// create fails on every delivery; once they run out the record says
// Failed, Created False CreateRetriesExhausted with the pull's status
// line (not the page), rather than Creating for good. Each drift repair
// pass tries it again: while the image is missing the VM stays Failed, for
// the next pass; once the registry answers, the pass makes it.
func TestAGivenUpCreateFailsThenDriftRepairMakesIt(t *testing.T) {
	e := newEnvWith(t, func(c *nativevm.Config) { c.MaxDeliver = 2 })
	ctx := context.Background()
	var moved atomic.Bool
	img := startVMOS(t, ociregistry.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if moved.Load() {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusNotFound)
				_, _ = w.Write([]byte(movedPage))
				return
			}
			h.ServeHTTP(w, r)
		})
	}})
	e.declareClass("small", events.VirtualMachineClassSpec{CPUs: 1, Memory: "1Gi"})
	e.declareImage(events.VirtualMachineImageSpec{OCI: img})
	moved.Store(true)
	e.publish("podvisor/cli", vmDecl("small", ""))
	r := e.waitRecord("accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	e.place(r, e.dc.Hosts()[0])

	gaveUp := func(r *events.VMRecord) bool {
		c, _ := r.Condition(events.VMConditionCreated)
		return r.Status.Phase == events.VMPhaseFailed && c.Status == events.ConditionFalse && c.Reason == nativevm.ReasonCreateRetriesExhausted
	}
	r = e.waitRecord("Failed once the create's deliveries ran out", gaveUp)
	c, _ := r.Condition(events.VMConditionCreated)
	if !strings.Contains(c.Message, "pull "+img) || !strings.Contains(c.Message, "404 Not Found") || strings.Contains(c.Message, "<") {
		t.Errorf("Created condition message %q: want the pull of %s and its status line, without the page", c.Message, img)
	}

	if repaired, err := e.ctl.Resync(ctx); err == nil || len(repaired) != 0 {
		t.Fatalf("a pass while the image is missing = %v, %v; want the create failed and nothing repaired", repaired, err)
	}
	if r := e.waitRecord("still Failed", func(*events.VMRecord) bool { return true }); !gaveUp(r) {
		t.Fatalf("after a pass that could not make it: %+v; want Failed, CreateRetriesExhausted, for the next pass", r.Status)
	}

	moved.Store(false)
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairCreate] != 1 {
		t.Fatalf("a pass with the registry back = %v, %v; want the VM made", repaired, err)
	}
	r = e.waitRecord("Ready", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn
	})
	e.waitConsole(e.vm(r).Reference().Value, "init: ready")
	if repaired, err := e.ctl.Resync(ctx); err != nil || len(repaired) != 0 {
		t.Errorf("a pass after: %v, %v; want nothing to repair", repaired, err)
	}
}

// TestAVMNotBuiltYetFollowsItsImage: the registry moved after a VM was
// accepted and before it was made; the image re-applied with the new
// reference is what the VM is made from, though the VM's own declaration
// did not change. A VM already made keeps the image it was made from: made
// again after the image changed once more, it is its image still.
func TestAVMNotBuiltYetFollowsItsImage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	e.publish("podvisor/cli", vmDecl("small", ""))
	r := e.waitRecord("accepted", func(r *events.VMRecord) bool { return r.Generation == 1 })
	if r.Image.OCI != e.img {
		t.Fatalf("accepted with image %q; want %s", r.Image.OCI, e.img)
	}
	e.reg.Close()
	img := startVMOS(t, ociregistry.Config{})
	e.declareImage(events.VirtualMachineImageSpec{OCI: img})
	e.waitImage("vmos", img)

	e.place(r, e.dc.Hosts()[0])
	r = e.waitRecord("Ready from the image's new reference", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.PowerState == events.PowerStatePoweredOn
	})
	if r.Image.OCI != img || r.ImageDigest == "" || r.Generation != 1 {
		t.Errorf("record: image %q, digest %q, generation %d; want %s, its digest, and no new generation", r.Image.OCI, r.ImageDigest, r.Generation, img)
	}
	vm := e.vm(r)
	e.waitConsole(vm.Reference().Value, "init: ready")

	// Made, it keeps its image: the image's record changing again does
	// not move it, made again or not.
	const elsewhere = "127.0.0.1:1/podvisor/vmos:1.0"
	e.declareImage(events.VirtualMachineImageSpec{OCI: elsewhere})
	e.waitImage("vmos", elsewhere)
	e.powerOff(vm)
	if err := vm.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairMissing] != 1 {
		t.Fatalf("Resync = %v, %v; want the lost VM made again", repaired, err)
	}
	r = e.waitRecord("made again", func(r *events.VMRecord) bool {
		return r.Status.Phase == events.VMPhaseReady && r.Status.VM != vm.Reference().Value
	})
	if r.Image.OCI != img {
		t.Errorf("the VM made again has image %q; want %s, the one it was made from", r.Image.OCI, img)
	}
}

// startVMOS starts a registry of cfg holding the sample VM image, and
// returns the image's reference.
func startVMOS(t *testing.T, cfg ociregistry.Config) string {
	t.Helper()
	reg, err := ociregistry.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	img, err := ociregistry.SeedVMOS(context.Background(), reg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// waitImage waits until the image record of name names the OCI reference
// ref.
func (e *env) waitImage(name, ref string) {
	e.t.Helper()
	kv, err := e.bus.KV(context.Background(), events.BucketVMImages)
	if err != nil {
		e.t.Fatal(err)
	}
	images := record.New[events.VMImageRecord](kv, "vm image")
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, _, err := images.Get(context.Background(), name)
		if err != nil {
			e.t.Fatal(err)
		}
		if r != nil && r.Image.Spec.OCI == ref {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("image %s: record %+v; want reference %s", name, r, ref)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
