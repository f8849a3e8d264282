package scheduler_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/testenv"

	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
	"github.com/podvisor/podvisor/services/scheduler/plugins/datastoreavailable"
)

// With PODVISOR_SCHEDULER_REQUIRED_DATASTORES (the pod VM boot disk's
// datastore), pods go only to hosts that mount it: every pod of a burst
// lands in the one cluster whose hosts mount cluster-2-ds, and a datastore
// no host mounts leaves the pod unschedulable, the reason named.
func TestPodsGoOnlyWhereTheRequiredDatastoreIs(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 2, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.RequiredDatastores = []string{"cluster-2-ds"}
	}})
	var keys []string
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		keys = append(keys, e.accept(testPod(name, "100m", "64Mi")).ObjectKey())
	}
	for _, k := range keys {
		if s := e.waitScheduled(k); s.Cluster != "cluster-2" {
			t.Errorf("%s placed on %s in %s, which does not mount cluster-2-ds", k, s.Host, s.Cluster)
		}
	}

	e2 := startEnv(t, envOptions{clusters: 1, hostsPerCluster: 2, cfg: func(c *scheduler.Config) {
		c.RequiredDatastores = []string{"no-such-ds"}
	}})
	u := e2.waitUnschedulable(e2.accept(testPod("web", "100m", "64Mi")).ObjectKey())
	if u.Reasons[datastoreavailable.Reason] != 2 {
		t.Fatalf("pod.unschedulable %q reasons %v, want both hosts %s", u.Message, u.Reasons, datastoreavailable.Reason)
	}
}

// The setting is read as a comma list, and a custom profile that would
// ignore it (no DatastoreAvailable filter) is refused, naming the field.
func TestRequiredDatastoresSetting(t *testing.T) {
	t.Setenv(scheduler.EnvRequiredDatastores, "images-ds, other-ds")
	c, err := scheduler.ConfigFromEnv()
	if err != nil || !slices.Equal(c.RequiredDatastores, []string{"images-ds", "other-ds"}) {
		t.Fatalf("from env: %v, %v", c.RequiredDatastores, err)
	}
	p := plugins.DefaultProfile(framework.StrategySpread)
	p.Filters = slices.DeleteFunc(p.Filters, func(n string) bool { return n == datastoreavailable.Name })
	c.Profile = &p
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "RequiredDatastores") || !strings.Contains(err.Error(), datastoreavailable.Name) {
		t.Errorf("custom profile without the filter: %v", err)
	}
	// The same when the profile itself names the datastores.
	c.RequiredDatastores = nil
	p.RequiredDatastores = []string{"images-ds"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "RequiredDatastores") {
		t.Errorf("custom profile naming datastores without the filter: %v", err)
	}
}

// An evicted VM is made again from the disks it left (docs/architecture.md,
// "Drain and host loss"): it is placed again only on a host that mounts
// their datastore, even where a host of another cluster is emptier, and
// disks on a datastore no host mounts leave it unschedulable, the reason
// named.
func TestAnEvictedVMIsPlacedWhereItsDisksAre(t *testing.T) {
	e := startEnv(t, envOptions{clusters: 2, hostsPerCluster: 2})
	evict := func(name string, disks func(r *events.VMRecord)) (first *events.VMScheduled, acc *events.VMAccepted) {
		t.Helper()
		acc, first = e.runningVM(name, events.VMSize{CPUs: 1, MemoryMiB: 1024}, disks)
		e.PublishAs("podvisor/migration", events.TypeVMEvicted, acc.ObjectKey(), &events.VMEvicted{VMRef: acc.VMRef, Host: first.Host, Reason: "HostLost"})
		return first, acc
	}

	// Its disks on its cluster's own datastore; the other host of that
	// cluster is made the fullest.
	var ds string
	first, acc := evict("ha-vm", func(r *events.VMRecord) {
		ds = e.ClusterOf(r.Status.Host) + "-ds"
		r.Status.Datastores = []string{ds}
	})
	for _, h := range e.HostNames(first.Cluster) {
		if h != first.Host {
			for i := range 3 {
				e.waitScheduled(e.accept(testPod(fmt.Sprintf("on-%s-%d", h, i), "500m", "1Gi", onHost(h))).ObjectKey())
			}
		}
	}
	var again *events.VMScheduled
	e.EventuallyWithin("placed again", 10*time.Second, func() bool {
		all := e.vmPlacements(acc.UID)
		again = all[len(all)-1]
		return len(all) == 2
	})
	if again.Host == first.Host || again.Cluster != first.Cluster {
		t.Errorf("placed again on %s (%s), want the other host of %s, which mounts %s", again.Host, again.Cluster, first.Cluster, ds)
	}

	_, lost := evict("lost-disks", func(r *events.VMRecord) { r.DisksOn = "no-such-ds" })
	var u *events.VMUnschedulable
	e.EventuallyWithin("vm.unschedulable", 10*time.Second, func() bool {
		for _, x := range testenv.Distinct(e.Env, func(x *events.VMUnschedulable) bool { return x.UID == lost.UID }) {
			u = x
		}
		return u != nil
	})
	if u.Reasons[datastoreavailable.Reason] == 0 || !strings.Contains(u.Message, "no-such-ds") {
		t.Errorf("vm.unschedulable %q reasons %v, want %s naming no-such-ds", u.Message, u.Reasons, datastoreavailable.Reason)
	}
}
