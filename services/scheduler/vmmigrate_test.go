package scheduler_test

import (
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"

	"github.com/podvisor/podvisor/services/scheduler"
)

// A VM move the scheduler refuses names the VM's host as its source, as a
// reserved one does: the drain of that host waits for the answer (before,
// a refusal said "unknown", and the drain found no move to end).
func TestARefusedVMMoveNamesItsHost(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 1})
	acc, placed := e.runningVM("lonely", events.VMSize{CPUs: 1, MemoryMiB: 1024})

	for _, c := range []struct{ id, target, reason string }{
		{"to-itself", placed.Host, scheduler.ReasonSameHost},
		{"anywhere", "", scheduler.ReasonNoTarget}, // the only host is its own
	} {
		e.PublishAs("podvisor/migration", events.TypeVMMigrateRequested, acc.ObjectKey(),
			&events.VMMigrateRequested{ID: c.id, Namespace: acc.Namespace, Name: acc.Name, TargetHost: c.target})
		var got *events.VMMigrated
		e.EventuallyWithin("vm.migrated of "+c.id, 10*time.Second, func() bool {
			for _, x := range testenv.Distinct(e.Env, func(x *events.VMMigrated) bool { return x.ID == c.id }) {
				got = x
			}
			return got != nil
		})
		if got.Reason != c.reason || got.SourceHost != placed.Host {
			t.Errorf("%s: vm.migrated reason %q source %q (%s), want %s from %s", c.id, got.Reason, got.SourceHost, got.Message, c.reason, placed.Host)
		}
	}
}
