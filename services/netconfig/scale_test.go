package netconfig_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmware/govmomi/find"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/testenv"
)

// lastSeq is the last sequence of a bucket's stream: how many writes it
// ever took.
func (e *env) lastSeq(bucket string) uint64 {
	e.T.Helper()
	st, err := e.KV(bucket).Status(context.Background())
	if err != nil {
		e.T.Fatal(err)
	}
	info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	return info.State.LastSeq
}

// recordBytes is the stored size of a network's record.
func (e *env) recordBytes(name string) int {
	e.T.Helper()
	v, err := e.KV(events.BucketNetworks).Get(context.Background(), events.NetworkRecordKey(name))
	if err != nil {
		e.T.Fatal(err)
	}
	return len(v.Value())
}

// TestNetworkRecordDoesNotGrowWithHosts: each host's state of a network is
// its own key in net-realized, so the network record, which every attach
// reads, is the same size at 2 hosts as at 16, names no host, and a push
// that finds every host as it was writes nothing at all.
func TestNetworkRecordDoesNotGrowWithHosts(t *testing.T) {
	sizes := map[int]int{}
	for _, hosts := range []int{2, 16} {
		e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: hosts}, nil)
		e.declare("web", events.NetworkSpec{VLAN: 7, CIDR: "10.7.0.0/24"})
		testenv.Wait(e.Env, func(p *events.NetworkRealized) bool { return p.Name == "web" }) // published last
		e.waitRecord("web", func(r *events.NetworkRecord) bool {
			return r.Status == events.NetworkStatusReady && r.HostsReady == hosts && r.HostsInScope == hosts
		})
		for _, h := range e.HostNames("") {
			if st := e.hostState("web", h); !st.ReadyAt(1) || st.Network != "web" || st.Host != h || st.Pushed != 1 {
				t.Fatalf("%d hosts: state of %s = %+v, want ready at version 1", hosts, h, st)
			}
		}
		sizes[hosts] = e.recordBytes("web")
		raw, _ := e.KV(events.BucketNetworks).Get(context.Background(), "web")
		for _, h := range e.HostNames("") {
			if strings.Contains(string(raw.Value()), h) {
				t.Fatalf("%d hosts: the network record names host %s: %s", hosts, h, raw.Value())
			}
		}

		// A resync that finds every host as it was writes no record, no
		// host state and no availability.
		before := [3]uint64{e.lastSeq(events.BucketNetworks), e.lastSeq(events.BucketNetRealized), e.lastSeq(events.BucketNetHosts)}
		if err := e.svc.Resync(context.Background()); err != nil {
			t.Fatal(err)
		}
		after := [3]uint64{e.lastSeq(events.BucketNetworks), e.lastSeq(events.BucketNetRealized), e.lastSeq(events.BucketNetHosts)}
		if after != before {
			t.Fatalf("%d hosts: a resync with nothing changed wrote networks/net-realized/net-hosts %v → %v", hosts, before, after)
		}
	}
	// The same record but for its counts and timestamps: a few bytes apart.
	if d := sizes[16] - sizes[2]; d < -12 || d > 12 {
		t.Fatalf("record of 16 hosts is %d bytes, of 2 hosts %d: it grows with the hosts", sizes[16], sizes[2])
	}
}

// TestAttachesOnManyHostsWriteNoHostState schedules pods across every
// host, handled by two replicas at once while a resync pushes the network
// again: the addresses stay unique, the attaches write no per-host state,
// and the record is rewritten only by the recount of its addresses, whose
// value is the final count.
func TestAttachesOnManyHostsWriteNoHostState(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 2, HostsPerCluster: 8}, nil)
	stopReplica := e.replica()
	defer stopReplica()
	e.declare("web", events.NetworkSpec{VLAN: 7, CIDR: "10.7.0.0/24"})
	e.waitRecord("web", func(r *events.NetworkRecord) bool { return r.HostsReady == 16 })
	hosts := e.HostNames("")
	realizedWrites := e.lastSeq(events.BucketNetRealized)

	const pods = 48
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := e.svc.Resync(context.Background()); err != nil {
			t.Error(err)
		}
	})
	for i := range pods {
		e.schedule(fmt.Sprintf("p%d", i), fmt.Sprintf("uid-scale-%d", i), hosts[i%len(hosts)], "web")
	}
	att := testenv.WaitN(e.Env, pods, func(p *events.PodNetworkAttached) bool { return strings.HasPrefix(p.Name, "p") })
	wg.Wait()
	ips := map[string]string{}
	for _, a := range att {
		ip := a.Attachments[0].IP
		if other, dup := ips[ip]; dup && other != a.Name {
			t.Fatalf("%s and %s both got %s", other, a.Name, ip)
		}
		ips[ip] = a.Name
	}
	if len(ips) != pods {
		t.Fatalf("%d distinct addresses for %d pods", len(ips), pods)
	}
	e.waitRecord("web", func(r *events.NetworkRecord) bool { return r.IPsUsed == pods })
	if n := e.lastSeq(events.BucketNetRealized); n != realizedWrites {
		t.Fatalf("attaching %d pods on %d hosts wrote %d host states, want none", pods, len(hosts), n-realizedWrites)
	}
	if rec := e.record("web"); rec.HostsReady != 16 || rec.Status != events.NetworkStatusReady {
		t.Fatalf("record after the attaches: %d hosts ready, status %s", rec.HostsReady, rec.Status)
	}
	// Deleting the network is refused while they hold addresses, with
	// every pod counted.
	e.Publish(&events.NetworkDeleteRequested{Name: "web"})
	rej := testenv.Wait(e.Env, func(p *events.NetworkDeleteRejected) bool { return p.Name == "web" })
	if rej.Reason != netconfig.ReasonInUse || len(rej.Pods) != pods {
		t.Fatalf("delete = %s with %d pods, want InUse with %d", rej.Reason, len(rej.Pods), pods)
	}
}

// TestDeletedNetworkLeavesNoHostState: deleting a network removes its
// hosts' states with it, so a network declared again under the name starts
// from nothing.
func TestDeletedNetworkLeavesNoHostState(t *testing.T) {
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 4}, nil)
	e.declare("tmp", events.NetworkSpec{VLAN: 9, CIDR: "10.9.0.0/24"})
	e.waitRecord("tmp", func(r *events.NetworkRecord) bool { return r.HostsReady == 4 })
	e.Publish(&events.NetworkDeleteRequested{Name: "tmp"})
	testenv.Wait(e.Env, func(p *events.NetworkDeleted) bool { return p.Name == "tmp" })
	for _, h := range e.HostNames("") {
		if st := e.hostState("tmp", h); st != nil {
			t.Fatalf("after the delete %s still has %+v", h, st)
		}
	}
}

// TestAttachDoesNotWaitForAPush: a push holds its network for the whole
// read-back of every host and then the probe window (minutes at thousands
// of hosts); attaches on hosts that carry the network's current version
// go on meanwhile. The push here is a resync repairing a port group edited
// by hand, so it probes for the window after restoring it.
func TestAttachDoesNotWaitForAPush(t *testing.T) {
	const window = 5 * time.Second
	e := newEnv(t, sim.Config{Clusters: 1, HostsPerCluster: 3}, func(c *netconfig.Config) { c.ProbeWindow = window })
	e.declareRealized("web", events.NetworkSpec{VLAN: 7, CIDR: "10.7.0.0/24"})
	host := e.HostNames("")[0]

	ctx := context.Background()
	dc, err := find.NewFinder(e.vc.Client).Datacenter(ctx, "DC0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fabric.New(e.vc.Client, dc).EnsurePortGroup(ctx, "pv-dvs", fabric.PortGroupSpec{Name: "pv-web", VLAN: 99, Description: "edited by hand"}); err != nil {
		t.Fatal(err)
	}
	resynced := make(chan error, 1)
	go func() { resynced <- e.svc.Resync(ctx) }()
	// The resync restored the port group: it now watches the hosts for the
	// probe window, holding the network.
	waitFor(t, "the resync to restore pv-web", func() bool { return e.portGroup("pv-web").VLAN == 7 })
	start := time.Now()
	e.schedule("p1", "uid-during-push", host, "web")
	testenv.Wait(e.Env, func(p *events.PodNetworkAttached) bool { return p.Name == "p1" })
	took := time.Since(start)
	select {
	case err := <-resynced:
		t.Fatalf("the resync (err %v) ended before the attach (%s): nothing shows the attach did not wait for it", err, took)
	default:
	}
	t.Logf("attached in %s while the push probed for %s", took, window)
	if err := <-resynced; err != nil {
		t.Fatal(err)
	}
}
