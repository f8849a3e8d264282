package provisioner

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// env is one test's world (shared/testenv): a JetStream server, a
// simulated datacenter with the pv-default port group and image disks on
// the shared datastore, and a recorder of every event on the bus.
type env struct {
	*testenv.Env
	vc   *govmomi.Client
	dco  *object.Datacenter
	vms  *podvm.Client
	sess *vsphere.Session
}

func newEnv(t testing.TB) *env {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(sim.Config{
		Clusters: 1, HostsPerCluster: 2, Seed: 1,
		PortGroups: []sim.PortGroupSpec{{Name: "pv-default"}, {Name: "pv-backend"}},
	}))
	sess := simtest.Session(t, te.DC)
	e := &env{Env: te, vc: sess.Client, dco: sess.Datacenter, sess: sess,
		vms: podvm.New(sess.Vim(), sess.Datacenter)}
	e.vms.BlankEphemeral = true // as testConfig's
	// What the image cache would have made: one disk per name in
	// [shared-ds] podvisor-images/, standing in for image chains.
	simtest.CreateDisks(t, e.vc, e.dco, "[shared-ds] podvisor-images",
		imageDisk("app"), imageDisk("sidecar"), imageDisk("logger"), imageDisk("base"))
	return e
}

func imageDisk(name string) string { return "[shared-ds] podvisor-images/" + name + ".vmdk" }

// testConfig is fast: short backoff, no periodic resync (tests call Resync).
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Workers = 4
	cfg.AckWait = 2 * time.Second
	cfg.MaxAttempts = 4
	cfg.BackOff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}
	cfg.StepTimeout = 20 * time.Second
	cfg.ResyncInterval = 0
	// Without guests a delete would wait out every grace period; the
	// tests of the wait turn it on.
	cfg.AwaitGuestStop = false
	// No guest mounts disk 0 here: no ephemeral template to build (and
	// upload) in every test.
	cfg.EphemeralTemplate = false
	return cfg
}

// start runs a provisioner until the test ends (or stop is called).
func (e *env) start(cfg Config) (svc *Service, stop func()) {
	e.T.Helper()
	svc, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: testenv.Logger()})
	if err != nil {
		e.T.Fatalf("new service: %v", err)
	}
	return svc, e.Run(Name, svc.Run)
}

// request publishes pod.requested and waits for the admission answer.
func (e *env) request(pod *corev1.Pod) *events.PodAccepted {
	e.T.Helper()
	e.Send("test/client", events.TypePodRequested, &events.PodRequested{Pod: *pod})
	return testenv.Wait(e.Env, func(a *events.PodAccepted) bool { return a.Name == pod.Name })
}

// record reads a pod record straight from KV, as the provisioner does
// (ResourceVersion is the entry's revision); waitRecord waits until it
// satisfies pred.
func (e *env) record(svc *Service, ns, name string) *events.PodRecord {
	e.T.Helper()
	r, err := svc.recordsReady().get(context.Background(), events.PodRecordKey(ns, name))
	if err != nil {
		e.T.Fatalf("read record: %v", err)
	}
	return r
}

func (e *env) waitRecord(svc *Service, ns, name string, pred func(*events.PodRecord) bool) *events.PodRecord {
	e.T.Helper()
	var r *events.PodRecord
	e.Eventually(fmt.Sprintf("record %s/%s in the expected state", ns, name), func() bool {
		r = e.record(svc, ns, name)
		return pred(r)
	})
	return r
}

// vmsNamed lists the VMs with this name anywhere in the datacenter.
func (e *env) vmsNamed(name string) []podvm.VM {
	e.T.Helper()
	vms, err := e.vms.List(context.Background(), "")
	if err != nil {
		e.T.Fatalf("list VMs: %v", err)
	}
	return slices.DeleteFunc(vms, func(v podvm.VM) bool { return v.Name != name })
}
