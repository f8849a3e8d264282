package scheduler_test

import (
	"slices"
	"strings"
	"testing"

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
