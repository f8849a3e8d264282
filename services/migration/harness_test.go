package migration

import (
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/migration/vmotion"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// world is one test's system: a JetStream server, a simulated datacenter,
// the migration service under test, and small stand-ins for the services
// that are not under test, which publish what those would (the scheduler's
// reservations, the provisioner's pod records, network-config's
// availability, the inventory's host records). Every event on the bus is
// recorded.
type world struct {
	*testenv.Env
	vc    *govmomi.Client
	vm    *vmotion.Client
	pods  *record.Store[events.PodRecord]
	sched *scheduler
	svc   *Service
	// stop ends the running service and waits for Run to return.
	stop func()
}

func newWorld(t *testing.T, clusters, hostsPerCluster int) *world {
	t.Helper()
	te := testenv.Start(t, testenv.Datacenter(sim.Config{Clusters: clusters, HostsPerCluster: hostsPerCluster, Seed: 7}))
	dc, sess := te.DC, simtest.Session(t, te.DC)
	w := &world{Env: te, vc: sess.Client, vm: vmotion.New(sess.Client.Client, sess.Datacenter)}
	w.pods = record.New[events.PodRecord](te.KV(events.BucketPods), "pod")
	w.pods.Attempts = 20
	// The inventory's host records and network-config's availability:
	// "default" on every host, "backend" on cluster-1 only.
	te.PutHostRecords()
	w.network("default", simtest.HostNames(dc, "")...)
	w.network("backend", simtest.HostNames(dc, dc.Clusters()[0].Name)...)
	w.sched = newScheduler(w)
	return w
}

func (w *world) clusterHosts(i int) []string { return w.DC.Clusters()[i].Hosts }

// relocateDelay makes every vMotion the simulated vCenter runs from now on
// take d (0: no delay), failing the test if it cannot.
func (w *world) relocateDelay(d time.Duration) {
	w.T.Helper()
	if err := w.DC.SetTaskDelay("RelocateVm", d); err != nil {
		w.T.Fatal(err)
	}
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Workers = 8
	cfg.AckWait = 5 * time.Second
	cfg.MaxAttempts = 5
	cfg.BackOff = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}
	cfg.SweepInterval = 100 * time.Millisecond
	cfg.PrecheckTimeout = 10 * time.Second
	cfg.RelocateTimeout = 20 * time.Second
	cfg.DrainTimeout = 60 * time.Second
	return cfg
}

// start runs the service until the test ends; newService makes one,
// which runService runs until the test ends or w.stop is called.
func (w *world) start(cfg Config) *Service { return w.runService(w.newService(cfg)) }

// runningWorld is the opening most tests share: newWorld with the service
// started on testConfig(), and the hosts of the first cluster.
func runningWorld(t *testing.T, clusters, hostsPerCluster int) (*world, []string) {
	t.Helper()
	w := newWorld(t, clusters, hostsPerCluster)
	w.start(testConfig())
	return w, w.clusterHosts(0)
}

func (w *world) newService(cfg Config) *Service {
	w.T.Helper()
	svc, err := newService(cfg, w.Bus, w.vm, testenv.Logger().With("test", w.T.Name()))
	if err != nil {
		w.T.Fatalf("new service: %v", err)
	}
	return svc
}

func (w *world) runService(svc *Service) *Service {
	w.svc, w.stop = svc, w.Run(Name, svc.Run)
	return svc
}

// vmHost is where vCenter says a VM runs, and its resource pool.
func (w *world) vmHost(ref types.ManagedObjectReference) (host string, pool types.ManagedObjectReference) {
	w.T.Helper()
	return simtest.VMHost(w.T, w.vc, ref)
}

func (w *world) podRecord(name string) *events.PodRecord {
	return testenv.MustGet[events.PodRecord](w.Env, events.BucketPods, events.PodRecordKey("default", name))
}

func (w *world) migration(id string) *events.MigrationRecord {
	return testenv.MustGet[events.MigrationRecord](w.Env, events.BucketMigrations, events.MigrationRecordKey(id))
}

// migrationPhase is a migration's phase, "" while it has no record.
func (w *world) migrationPhase(id string) string {
	if r := testenv.Get[events.MigrationRecord](w.Env, events.BucketMigrations, events.MigrationRecordKey(id)); r != nil {
		return r.Phase
	}
	return ""
}

// migrate publishes migration.requested as the CLI does; its sequence.
func (w *world) migrate(id string, p pod, to string) uint64 {
	w.T.Helper()
	return w.Send("podvisor/cli", events.TypeMigrationRequested, &events.MigrationRequested{MigrationRef: events.MigrationRef{ID: id, Namespace: p.ns, Pod: p.name}, TargetHost: to})
}

// waitEnd waits for the migration's final event and returns its type and
// payload.
func (w *world) waitEnd(id string) (string, any) {
	w.T.Helper()
	s := w.WaitSeen(20*time.Second, "the end of migration "+id, func(s testenv.Seen) bool {
		switch v := s.Payload.(type) {
		case *events.MigrationCompleted:
			return v.ID == id
		case *events.MigrationFailed:
			return v.ID == id
		case *events.MigrationCancelled:
			return v.ID == id && s.Event.Source() == Source && !strings.Contains(s.Event.ID(), "release")
		case *events.MigrationRejected:
			return v.ID == id
		}
		return false
	})
	return s.Event.Type(), s.Payload
}

// wantEnd waits for the migration's final event, fails the test unless its
// type is want, and returns its payload.
func (w *world) wantEnd(id, want string) any {
	w.T.Helper()
	typ, payload := w.waitEnd(id)
	if typ != want {
		w.T.Fatalf("migration %s ended with %s %+v, want %s", id, typ, payload, want)
	}
	return payload
}
