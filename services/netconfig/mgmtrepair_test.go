package netconfig_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// An operator edits one host's management port onto the wrong VLAN through
// vCenter: that host alone stops responding. network-config clones the port
// with the last good configuration, reaches the host through the clone,
// repairs the port and removes the clone — without touching any other host
// or any network. While the host cannot respond at all (failed), the clone
// does not reach it: the attempt fails with its reason, the clone goes, and
// the repair succeeds once the host is back.
func TestMisconfiguredManagementPortRepairedThroughAClone(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 3}, func(c *netconfig.Config) {
		c.ManagementInterval = 50 * time.Millisecond
	})
	ctx := context.Background()
	if err := e.DC.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	e.declareRealized("web", events.NetworkSpec{VLAN: 100, CIDR: "10.60.0.0/24"})
	hosts := e.HostNames("")
	victim, others := hosts[0], hosts[1:]
	key := sim.ManagementPortKey(victim)
	dvs := object.NewDistributedVirtualSwitch(e.vc.Client, e.DC.DVS())
	setVLAN := func(vlan int32) { e.setPortVLAN(dvs, key, vlan) }

	// Phase 1: the host is down for another reason too; the clone cannot
	// reach it.
	if err := e.DC.FailHost(ctx, victim); err != nil {
		t.Fatal(err)
	}
	setVLAN(99)
	failed := testenv.Wait(e.Env, func(p *events.NetworkManagementFailed) bool { return p.Host == victim })
	if failed.Reason != netconfig.ReasonCloneUnreachable || failed.Found.VLAN != 99 || failed.LastGood.VLAN != 4000 {
		t.Fatalf("failed = %+v, want CloneUnreachable, found vlan 99, last good 4000", failed)
	}
	if p := e.ports(dvs); p[failed.Clone] != nil {
		t.Fatalf("clone %s left after the failed attempt", failed.Clone)
	}

	// Phase 2: the host is back, still cut off by its port; repaired.
	if err := e.DC.RecoverHost(ctx, victim); err != nil {
		t.Fatal(err)
	}
	// Each attempt clones: the failed ones (one or more, however many the
	// repair made while the host was down), then this one.
	repaired := testenv.Wait(e.Env, func(p *events.NetworkManagementRepaired) bool { return p.Host == victim })
	clones := testenv.All(e.Env, func(p *events.NetworkManagementCloned) bool { return p.Host == victim && p.Port == key })
	cloned := clones[len(clones)-1]
	if cloned.Reason != netconfig.ReasonManagementPortMisconfigured || cloned.Found.VLAN != 99 || cloned.LastGood.VLAN != 4000 ||
		cloned.Clone == "" || !strings.Contains(cloned.Message, "vlan 99") {
		t.Fatalf("cloned = %+v", cloned)
	}
	if repaired.Reason != netconfig.ReasonManagementPortRepaired || repaired.Port != key || repaired.LastGood.VLAN != 4000 {
		t.Fatalf("repaired = %+v", repaired)
	}
	t.Logf("cloned: %s", cloned.Message)
	t.Logf("repaired: %s", repaired.Message)

	// vCenter, read independently: the port is back on the management
	// VLAN, the clone is gone, every host responds, the others' ports and
	// the network were not touched.
	ports := e.ports(dvs)
	if p := ports[key]; p == nil || simtest.PortVLAN(*p) != 4000 {
		t.Fatalf("port %s after the repair: %+v, want vlan 4000", key, p)
	}
	if ports[cloned.Clone] != nil {
		t.Errorf("clone %s still on the switch", cloned.Clone)
	}
	for _, h := range others {
		if p := ports[sim.ManagementPortKey(h)]; p == nil || simtest.PortVLAN(*p) != 4000 {
			t.Errorf("port of %s: %+v, want untouched on vlan 4000", h, p)
		}
	}
	for h, s := range e.connection() {
		if s != types.HostSystemConnectionStateConnected {
			t.Errorf("host %s is %s after the repair", h, s)
		}
	}
	if n := e.Events.Count(events.TypeNetworkRolledBack); n != 0 {
		t.Errorf("%d network rollbacks: the repair must not roll networks back", n)
	}
	// Every attempt cloned at most once and ended once: failed while the
	// host was down (as often as the repair tried then; an attempt may fail
	// before its clone is made), repaired once it was back.
	failures := e.Events.Count(events.TypeNetworkManagementFailed)
	clonedN, repairedN := e.Events.Count(events.TypeNetworkManagementCloned), e.Events.Count(events.TypeNetworkManagementRepaired)
	if failures < 1 || repairedN != 1 || clonedN < 2 || clonedN > failures+1 {
		t.Errorf("%d failed, %d cloned, %d repaired events on %s: want at least one failure, one repair, and a clone per attempt at most",
			failures, clonedN, repairedN, victim)
	}
	if rec := e.record("web"); rec.Version != 1 || len(rec.History) != 1 {
		t.Errorf("network web: version %d with %d versions, want untouched at 1", rec.Version, len(rec.History))
	}
}

// A replica that takes over repairs a port that broke before it started,
// with the host's own last good configuration that its predecessor kept in
// KV — here with no connected host left whose port could stand in for it.
func TestManagementRepairRemembersAcrossReplicas(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 1}, func(c *netconfig.Config) {
		c.ManagementInterval = 50 * time.Millisecond
	})
	ctx := context.Background()
	if err := e.DC.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	host := e.HostNames("")[0]
	e.EventuallyWithin("network-config to remember the management port of "+host, 20*time.Second, func() bool {
		kv, err := e.Bus.KV(ctx, events.BucketNetMgmt)
		if err != nil {
			return false
		}
		entry, err := kv.Get(ctx, host)
		var good struct {
			VLAN int32 `json:"vlan"`
		}
		return err == nil && json.Unmarshal(entry.Value(), &good) == nil && good.VLAN == 4000
	})
	e.stop()

	key := sim.ManagementPortKey(host)
	dvs := object.NewDistributedVirtualSwitch(e.vc.Client, e.DC.DVS())
	e.setPortVLAN(dvs, key, 99)
	e.EventuallyWithin(host+" to stop responding", 20*time.Second, func() bool {
		return e.connection()[host] != types.HostSystemConnectionStateConnected
	})
	e.replica()
	repaired := testenv.Wait(e.Env, func(p *events.NetworkManagementRepaired) bool { return p.Host == host })
	if repaired.LastGood.VLAN != 4000 || repaired.Found.VLAN != 99 {
		t.Fatalf("repaired = %+v, want found vlan 99, last good 4000", repaired)
	}
	if p := e.ports(dvs)[key]; p == nil || simtest.PortVLAN(*p) != 4000 {
		t.Errorf("port %s after the repair: %+v, want vlan 4000", key, p)
	}
}

// setPortVLAN puts a distributed port on vlan through vCenter, as an
// operator would.
func (e *env) setPortVLAN(dvs *object.DistributedVirtualSwitch, key string, vlan int32) {
	e.T.Helper()
	ctx := context.Background()
	task, err := dvs.ReconfigureDVPort(ctx, []types.DVPortConfigSpec{{Operation: "edit", Key: key,
		Setting: &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: vlan}}}})
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		e.T.Fatal(err)
	}
}

// ports reads the switch's ports by key with the independent client.
func (e *env) ports(dvs *object.DistributedVirtualSwitch) map[string]*types.DistributedVirtualPort {
	e.T.Helper()
	all, err := dvs.FetchDVPorts(context.Background(), nil)
	if err != nil {
		e.T.Fatal(err)
	}
	out := map[string]*types.DistributedVirtualPort{}
	for i := range all {
		out[all[i].Key] = &all[i]
	}
	return out
}

// connection reads every host's connection state with the independent
// client.
func (e *env) connection() map[string]types.HostSystemConnectionState {
	e.T.Helper()
	out := map[string]types.HostSystemConnectionState{}
	for _, h := range e.DC.Hosts() {
		var hs mo.HostSystem
		if err := e.vc.RetrieveOne(context.Background(), h.Ref, []string{"runtime.connectionState"}, &hs); err != nil {
			e.T.Fatal(err)
		}
		out[h.Name] = hs.Runtime.ConnectionState
	}
	return out
}

// Two replicas run side by side: one holds the repair lease, so a port that
// breaks is cloned and repaired once, with no failed attempt from a second
// replica racing the first on the same port.
func TestTwoReplicasRepairAManagementPortOnce(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 2}, func(c *netconfig.Config) {
		c.ManagementInterval = 50 * time.Millisecond
	})
	e.replica()
	if err := e.DC.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	host := e.HostNames("")[0]
	e.EventuallyWithin("network-config to remember the management port of "+host, 20*time.Second, func() bool {
		kv, err := e.Bus.KV(context.Background(), events.BucketNetMgmt)
		if err != nil {
			return false
		}
		entry, err := kv.Get(context.Background(), host)
		return err == nil && strings.Contains(string(entry.Value()), `"vlan":4000`)
	})
	key := sim.ManagementPortKey(host)
	dvs := object.NewDistributedVirtualSwitch(e.vc.Client, e.DC.DVS())
	e.setPortVLAN(dvs, key, 99)
	testenv.Wait(e.Env, func(p *events.NetworkManagementRepaired) bool { return p.Host == host })
	if p := e.ports(dvs)[key]; p == nil || simtest.PortVLAN(*p) != 4000 {
		t.Errorf("port %s after the repair: %+v, want vlan 4000", key, p)
	}
	cloned, failed := e.Events.Count(events.TypeNetworkManagementCloned), e.Events.Count(events.TypeNetworkManagementFailed)
	if cloned != 1 || failed != 0 {
		t.Errorf("%d cloned and %d failed events for one broken port with two replicas: want one clone and no failure", cloned, failed)
	}
}
