package inventory_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler/inventory"
	"github.com/podvisor/podvisor/shared/sim"
)

func startSim(t *testing.T) (*sim.Datacenter, *inventory.Source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := sim.Start(ctx, sim.Config{Clusters: 2, HostsPerCluster: 3, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	c, err := d.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d, inventory.NewSource(c.Client)
}

// List reports exactly the hardware the simulator set through the vSphere
// API, with clusters, pools, datastores and networks resolved to names.
func TestListMatchesTheAPI(t *testing.T) {
	d, src := startSim(t)
	obs, err := src.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	specs := d.Hosts()
	if len(obs) != len(specs) {
		t.Fatalf("%d hosts observed, sim has %d", len(obs), len(specs))
	}
	byName := map[string]inventory.Observation{}
	for _, o := range obs {
		byName[o.Info.Name] = o
	}
	unequal := map[int64]bool{}
	for _, s := range specs {
		o, ok := byName[s.Name]
		if !ok {
			t.Fatalf("host %s not observed", s.Name)
		}
		i := o.Info
		if int(i.CPUCores) != s.Cores || int(i.CPUMHz) != s.MHz || i.MemoryBytes != s.MemoryBytes {
			t.Errorf("%s: observed %d cores %d MHz %d bytes, sim set %d/%d/%d", s.Name, i.CPUCores, i.CPUMHz, i.MemoryBytes, s.Cores, s.MHz, s.MemoryBytes)
		}
		unequal[i.MemoryBytes*1000+int64(i.CPUCores)] = true
		if i.Cluster != s.Cluster || i.ConnectionState != events.HostConnected || i.Maintenance {
			t.Errorf("%s: cluster %q state %q maintenance %v", s.Name, i.Cluster, i.ConnectionState, i.Maintenance)
		}
		if o.ResourcePool != "/DC0/host/"+s.Cluster+"/Resources" {
			t.Errorf("%s: resource pool %q", s.Name, o.ResourcePool)
		}
		if !contains(i.Datastores, "shared-ds") || !contains(i.Datastores, sim.ClusterDatastore(s.Cluster)) {
			t.Errorf("%s: datastores %v", s.Name, i.Datastores)
		}
		// The host's networks (the VM Network and the switch's port
		// groups) by name.
		if len(i.Networks) == 0 || slices.Contains(i.Networks, "") {
			t.Errorf("%s: networks %q, want the host's networks named", s.Name, i.Networks)
		}
		if i.Labels[inventory.LabelCluster] != s.Cluster || i.Labels[inventory.LabelHost] != s.Name || i.Labels[inventory.LabelHostname] != s.Name {
			t.Errorf("%s: labels %v", s.Name, i.Labels)
		}
	}
	if len(unequal) < 2 {
		t.Errorf("all hosts look alike (%v): the sim's unequal hardware did not come through", unequal)
	}
}

// Watch sees a host stop responding and come back, and a custom attribute
// set on a host becomes a label.
func TestWatchSeesStateAndLabels(t *testing.T) {
	d, src := startSim(t)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	latest := map[string]events.HostInfo{}
	done := make(chan error, 1)
	go func() {
		done <- src.Watch(ctx, func(u inventory.Update) {
			mu.Lock()
			defer mu.Unlock()
			for _, o := range u.Changed {
				latest[o.Info.Name] = o.Info
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch: %v", err)
		}
	})
	host := d.Hosts()[0].Name
	waitFor := func(what string, ok func(events.HostInfo) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			mu.Lock()
			h, seen := latest[host]
			mu.Unlock()
			if seen && ok(h) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("watch never saw %s", what)
	}
	waitFor("the host", func(events.HostInfo) bool { return true })
	if err := d.FailHost(ctx, host); err != nil {
		t.Fatal(err)
	}
	waitFor("notResponding", func(h events.HostInfo) bool { return h.ConnectionState == events.HostNotResponding })
	if err := d.RecoverHost(ctx, host); err != nil {
		t.Fatal(err)
	}
	waitFor("connected again", func(h events.HostInfo) bool { return h.ConnectionState == events.HostConnected })

	c, err := d.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := object.GetCustomFieldsManager(c.Client)
	if err != nil {
		t.Fatal(err)
	}
	def, err := m.Add(ctx, "gpu", "HostSystem", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := d.Host(host)
	if err := m.Set(ctx, spec.Ref, def.Key, "a100"); err != nil {
		t.Fatal(err)
	}
	// Custom values are not always pushed to watchers: a full List (the
	// periodic resync) must see the label in any case.
	obs, err := src.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range obs {
		if o.Info.Name == host && o.Info.Labels["gpu"] != "a100" {
			t.Errorf("labels %v, want gpu=a100 from the custom attribute", o.Info.Labels)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
