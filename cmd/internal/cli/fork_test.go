package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/sim/guest"
)

// Forked pod VMs as a user meets them: `podvisor up --guests on` with one
// warm template per host. The first pod of an image is created (VMForked
// False, NoTemplate) and its host's template is built; once the template's
// guest has run the image, the next pod of the image is an instant clone
// of it (VMForked True; the simulator says whose fork its VM is) and its
// container runs and logs; the next one resumes the template's standby
// guest rather than booting, and runs and logs as itself; a pod of a new image (another layer) gets a
// template of its own, which replaces the first; an InstantClone that
// fails falls back to a create, the reason on the pod.
func TestUpGuestsForkPodVMsFromTemplates(t *testing.T) {
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: 1,
		Settings: config.Map(map[string]string{provisioner.EnvEphemeralDisk: "128", provisioner.EnvTemplatesWarm: "1", provisioner.EnvForkEarly: "true"})})
	f := newForkUp(t, sys, dir)
	// A pod placed with its images ready while its shape has a template is
	// forked before its network is attached (its VMForked condition says
	// so once the network came); which forked pods were depends on when
	// network-config answered, so the test wants at least one of them.
	var forkedEarly []string
	noteEarly := func(r *events.PodRecord) {
		if c, ok := r.Condition(events.PodConditionVMForked); ok && c.Status == events.ConditionTrue && strings.Contains(c.Message, "before the network was attached") {
			forkedEarly = append(forkedEarly, r.Name)
		}
	}

	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	first := f.deploy("first", image)
	if st, reason := forkedOf(first); st != events.ConditionFalse || reason != templates.ReasonNoTemplate {
		t.Fatalf("first pod: VMForked %s/%s, want False/NoTemplate", st, reason)
	}
	tmpl := f.preparedTemplate("")

	second := f.deployFork("second", image, tmpl)
	noteEarly(second)
	// The template's first fork booted a standby of it: the next fork
	// resumes that guest instead of booting one, and runs its own pod.
	standby := f.standby(tmpl)
	resumed := f.deployFork("resumed", image, tmpl)
	if g, ok := sys.Datacenter.Guests().Guest(resumed.VMRef); !ok || g.PID != standby.PID {
		t.Fatalf("pod resumed's guest is process %d (running %v), want the template's standby %d", g.PID, ok, standby.PID)
	}
	noteEarly(resumed)

	// A new image (one more layer): a new template replaces the old one.
	extra, err := ociregistry.Layer(ociregistry.LayerSpec{Path: "etc/podvisor-release", Size: 64, Seed: 20})
	if err != nil {
		t.Fatal(err)
	}
	src, err := name.ParseReference(image)
	if err != nil {
		t.Fatal(err)
	}
	base, err := remote.Image(src, sys.RegistryOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	image2 := sys.Endpoints.Registry + "/podvisor/busybox:2"
	dst, err := name.ParseReference(image2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img, sys.RegistryOptions()...); err != nil {
		t.Fatal(err)
	}
	if st, reason := forkedOf(f.deploy("third", image2)); st != events.ConditionFalse || reason != templates.ReasonNoTemplate {
		t.Fatalf("first pod of the new image: VMForked %s/%s, want False/NoTemplate", st, reason)
	}
	newer := f.preparedTemplate(tmpl.Name)
	eventuallyWithin(t, 30*time.Second, "the old image's template removed", func() bool {
		all := f.templates()
		return len(all) == 1 && all[0].Name == newer.Name && !guestRuns(sys, tmpl.VMRef)
	})

	// InstantClone fails once: the pod VM is created, the pod says why.
	if err := sys.Datacenter.AddFault(simulator.FaultInjectionRule{MethodName: "InstantClone_Task", ObjectType: "VirtualMachine",
		Probability: 1, FaultType: simulator.FaultTypeInsufficientResourcesFault, MaxCount: 1}); err != nil {
		t.Fatal(err)
	}
	fourth := f.deploy("fourth", image2)
	if st, reason := forkedOf(fourth); st != events.ConditionFalse || reason != templates.ReasonInstantCloneFailed {
		t.Fatalf("pod with InstantClone failing: VMForked %s/%s, want False/InstantCloneFailed", st, reason)
	}
	if sys.Datacenter.ForkedFrom(fourth.VMRef) != "" {
		t.Fatal("the pod whose fork failed runs in a fork")
	}
	out, _, code := run(t, dir, "", "describe", "pod", "fourth")
	if code != 0 || !strings.Contains(out, templates.ReasonInstantCloneFailed) {
		t.Errorf("describe pod fourth does not show why it was not forked:\n%s", out)
	}
	fifth := f.deployFork("fifth", image2, newer)
	noteEarly(fifth)
	if len(forkedEarly) == 0 {
		t.Fatal("no forked pod was forked before its network was attached (second, resumed, fifth)")
	}
	t.Logf("forked before their network: %v", forkedEarly)
	// An early fork's guest got its network from the reconfigure: the
	// agent configured the pod's card before the container started.
	g, ok := sys.Datacenter.Guests().Guest(f.record(forkedEarly[0]).VMRef)
	if !ok {
		t.Fatalf("pod %s runs no guest", forkedEarly[0])
	}
	console, err := os.ReadFile(filepath.Join(g.Dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(console), `msg="network attached"`) || !strings.Contains(string(console), "nics=1") {
		t.Errorf("pod %s's guest did not get its network from the update:\n%s", forkedEarly[0], console)
	}
}

// forkUp reads what `up` made of forked pods: the pods' records and the
// provisioner's templates, through the admin identity.
type forkUp struct {
	t      *testing.T
	sys    *allinone.System
	dir    string
	admin  *bus.Bus
	tmplKV jetstream.KeyValue
}

func newForkUp(t *testing.T, sys *allinone.System, dir string) *forkUp {
	t.Helper()
	admin, err := sys.Dial(t.Context(), bus.IdentityAdmin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	tmplKV, err := admin.KV(t.Context(), bus.BucketPodTemplates)
	if err != nil {
		t.Fatal(err)
	}
	return &forkUp{t: t, sys: sys, dir: dir, admin: admin, tmplKV: tmplKV}
}

func (f *forkUp) record(name string) *events.PodRecord {
	return podRecord(f.t, f.admin, "default", name)
}

// templates are the template records now.
func (f *forkUp) templates() []templates.Record {
	ctx := f.t.Context()
	lister, err := f.tmplKV.ListKeys(ctx)
	if err != nil {
		return nil
	}
	var out []templates.Record
	for k := range lister.Keys() {
		if e, err := f.tmplKV.Get(ctx, k); err == nil {
			var r templates.Record
			if json.Unmarshal(e.Value(), &r) == nil {
				out = append(out, r)
			}
		}
	}
	return out
}

// preparedTemplate waits for a template other than not that is ready and
// whose guest said it is prepared.
func (f *forkUp) preparedTemplate(not string) templates.Record {
	f.t.Helper()
	var got templates.Record
	eventuallyWithin(f.t, 90*time.Second, "a prepared template", func() bool {
		for _, r := range f.templates() {
			if r.Name != not && r.State == templates.StateReady && r.GuestReady {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// deploy applies a pod of one container of image that logs who it is,
// and waits until it runs and its log says so.
func (f *forkUp) deploy(pod, image string) *events.PodRecord {
	f.t.Helper()
	mustRun(f.t, f.dir, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: %s
    command: ["/bin/sh", "-c", "echo I am %s; exec sleep 3600"]
`, pod, image, pod), "apply", "-f", "-")
	waitRunning(f.t, f.dir, pod, "", 90*time.Second)
	eventuallyWithin(f.t, 20*time.Second, pod+" logs who it is", func() bool {
		out, _, code := run(f.t, f.dir, "", "logs", pod)
		return code == 0 && out == "I am "+pod+"\n"
	})
	return f.record(pod)
}

// deployFork deploys a pod as deploy does and checks its VM is a fork of
// tmpl.
func (f *forkUp) deployFork(pod, image string, tmpl templates.Record) *events.PodRecord {
	f.t.Helper()
	r := f.deploy(pod, image)
	if st, reason := forkedOf(r); st != events.ConditionTrue {
		f.t.Fatalf("pod %s: VMForked %s/%s, want True", pod, st, reason)
	}
	if got := f.sys.Datacenter.ForkedFrom(r.VMRef); got != tmpl.VMRef {
		f.t.Fatalf("pod %s's VM %s is a fork of %q, want the template %s", pod, r.VMRef, got, tmpl.VMRef)
	}
	return r
}

// standby waits for tmpl's standby guest (booted after its first fork).
func (f *forkUp) standby(tmpl templates.Record) guest.Info {
	f.t.Helper()
	var sb guest.Info
	eventuallyWithin(f.t, 30*time.Second, "a standby of the template", func() bool {
		var ok bool
		sb, ok = f.sys.Datacenter.Guests().Standby(tmpl.VMRef)
		return ok
	})
	return sb
}

// forkedOf is the status and reason of a pod's VMForked condition.
func forkedOf(r *events.PodRecord) (string, string) {
	if c, ok := r.Condition(events.PodConditionVMForked); ok {
		return c.Status, c.Reason
	}
	return "", ""
}

func guestRuns(sys *allinone.System, vm string) bool {
	_, ok := sys.Datacenter.Guests().Guest(vm)
	return ok
}
