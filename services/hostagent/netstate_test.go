package hostagent_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// A host whose segments drifted from its desired state converges with only
// the differing port groups changed: network-config's final state lists
// pv-a and pv-b; the host carries pv-a and pv-c (pv-b dropped, pv-c left
// over). The host agent carries pv-b, drops pv-c, leaves pv-a and the
// switch's own uplink port group alone, and reports exactly that; the other
// host, whose segments follow its switch membership, is untouched.
func TestDriftedHostConvergesWithOnlyTheDifference(t *testing.T) {
	privtest.Require(t, "simulated hosts' segments are Linux bridges")
	agent, err := simtest.AgentBinary()
	if err != nil {
		t.Fatalf("build podvm-agent: %v", err)
	}
	ctx := context.Background()
	b := bustest.Start(t)
	d, channels := simtest.StartWithGuests(t, 2, agent)
	hosts := d.Hosts()
	x, other := hosts[0].Name, hosts[1].Name
	c := simtest.Client(t, d)
	key := map[string]string{}
	for _, n := range []string{"pv-a", "pv-b", "pv-c"} {
		key[n] = simtest.AddPortGroup(t, c, d.DVS(), n)
	}
	segs := d.HostSegments(x)
	if err := segs.Drop(ctx, key["pv-b"]); err != nil { // the drift
		t.Fatal(err)
	}
	before, err := segs.Carried(ctx)
	if err != nil {
		t.Fatal(err)
	}

	run := startNetAgent(t, b, x, channels, segs, func(c *hostagent.Config) { c.NetworkResync = 300 * time.Millisecond })
	publish, reports := run.publish, run.reports

	pgs := []events.HostPortGroup{
		{Network: "a", PortGroup: "pv-a", Key: key["pv-a"], VLAN: 10, Version: 1},
		{Network: "b", PortGroup: "pv-b", Key: key["pv-b"], VLAN: 11, Version: 1},
	}
	desired := &events.NetworkHostDesired{Host: x, Digest: events.HostStateDigest(pgs), PortGroups: pgs}
	// Another host's state goes by unnoticed.
	publish(&events.NetworkHostDesired{Host: other, Digest: events.HostStateDigest(nil), PortGroups: nil})
	publish(desired)

	next := run.next
	r := next("for the state")
	if r.Host != x || r.Digest != desired.Digest || !slices.Equal(r.Added, []string{"pv-b"}) || !slices.Equal(r.Removed, []string{"pv-c"}) ||
		r.Unchanged != 1 || len(r.Failed) != 0 {
		t.Errorf("applied %+v; want pv-b added, pv-c removed, 1 unchanged, for %s at %s", r, x, desired.Digest)
	}
	after, err := segs.Carried(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, name := range before {
		if name == "pv-c" {
			continue
		}
		if after[k] != name {
			t.Errorf("%s (%s) was carried before and is not after: only the difference may change", name, k)
		}
	}
	if _, ok := after[key["pv-b"]]; !ok {
		t.Error("pv-b not carried after the state was applied")
	}
	if _, ok := after[key["pv-c"]]; ok {
		t.Error("pv-c still carried after the state was applied")
	}
	for n, k := range key {
		_, carriers := d.Segment(k)
		if !slices.Contains(carriers, other) {
			t.Errorf("%s: the other host %s no longer carries it (carriers %v)", n, other, carriers)
		}
		if want := n != "pv-c"; slices.Contains(carriers, x) != want {
			t.Errorf("%s: carried by %s = %v, want %v (carriers %v)", n, x, !want, want, carriers)
		}
	}
	// The same state again changes nothing.
	publish(&events.NetworkHostDesired{Host: x, Digest: desired.Digest, PortGroups: pgs})
	select {
	case r = <-reports:
		if len(r.Added)+len(r.Removed) != 0 || r.Unchanged != 2 {
			t.Errorf("the same state again: %+v, want nothing changed, 2 unchanged", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no report of the repeated state")
	}
	waitConsumed(t, b, x, 2)

	// The agent's consumer filters on the host's own subject: the server
	// delivered it its two states and never the other host's.
	info, err := consumerInfo(ctx, b, x)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 2 || info.Config.FilterSubject != events.SubjectNetworkHostDesiredFor(x) {
		t.Errorf("consumer of %s: %d delivered with filter %q, want 2 on %s", x, info.Delivered.Consumer, info.Config.FilterSubject, events.SubjectNetworkHostDesiredFor(x))
	}

	// Drift on the host after the state was applied: the agent repairs it
	// from the last state on its own, with no new message.
	if err := segs.Drop(ctx, key["pv-a"]); err != nil {
		t.Fatal(err)
	}
	if r = next("for the drift"); !slices.Equal(r.Added, []string{"pv-a"}) || len(r.Removed) != 0 || r.Digest != desired.Digest {
		t.Errorf("re-applied: %+v, want pv-a added back at %s", r, desired.Digest)
	}

	// A state naming a port group vCenter does not have (deleted by hand,
	// or not created again yet after a restart) fails with
	// PortGroupNotFound, which is not the host's failure, not CarryFailed.
	gone := append(slices.Clone(pgs), events.HostPortGroup{Network: "d", PortGroup: "pv-d", Key: "dvportgroup-404", VLAN: 13, Version: 1})
	publish(&events.NetworkHostDesired{Host: x, Digest: events.HostStateDigest(gone), PortGroups: gone})
	r = next("for a port group vCenter does not have")
	if len(r.Failed) != 1 || r.Failed[0].PortGroup != "pv-d" || r.Failed[0].Reason != hostagent.ReasonPortGroupNotFound {
		t.Errorf("applied %+v; want pv-d failed with %s", r, hostagent.ReasonPortGroupNotFound)
	}
}

// netAgentRun is a host agent applying its host's network states on
// network: the test publishes states and reads the agent's reports.
type netAgentRun struct {
	t       *testing.T
	reports chan *events.NetworkHostApplied
	publish func(events.Payload)
}

func startNetAgent(t *testing.T, b *bus.Bus, host, channels string, network hostagent.HostNetwork, tweak func(*hostagent.Config)) *netAgentRun {
	t.Helper()
	cfg := hostagent.DefaultConfig()
	cfg.Host, cfg.ChannelDir = host, channels
	tweak(&cfg)
	svc, err := hostagent.New(cfg, hostagent.Deps{Deps: deps.Deps{Bus: b}, Network: network})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Run(t, hostagent.Name, svc.Run)

	run := &netAgentRun{t: t, reports: make(chan *events.NetworkHostApplied, 4)}
	sub, err := b.Conn().Subscribe(events.SubjectNetworkHostApplied, func(m *nats.Msg) {
		ev, err := bus.DecodeMessage(m)
		if err != nil {
			t.Errorf("undecodable report: %v", err)
			return
		}
		p, err := events.Decode(ev.Type(), ev.Data())
		if err != nil {
			t.Errorf("invalid report: %v", err)
			return
		}
		run.reports <- p.(*events.NetworkHostApplied)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	run.publish = func(p events.Payload) {
		ev, err := bus.NewEvent("podvisor/netconfig", events.TypeNetworkHostDesired, p.ObjectKey(), p)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	return run
}

// next skips reports that changed nothing: the agent may read the state
// from the stream at start and then get it from its consumer.
func (r *netAgentRun) next(what string) *events.NetworkHostApplied {
	r.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case a := <-r.reports:
			if len(a.Added)+len(a.Removed)+len(a.Failed) > 0 {
				return a
			}
		case <-timeout:
			r.t.Fatalf("no network.host.applied %s within 20s", what)
		}
	}
}

// notCreatedYet is a host's segments on a vCenter that has no port group of
// key until created is set: network-config creating it again after a
// restart, under the key a restarted simulated datacenter gives it again,
// which one datacenter's life cannot show.
type notCreatedYet struct {
	hostagent.HostNetwork
	key     string
	created atomic.Bool
}

func (n *notCreatedYet) Carry(ctx context.Context, key string) error {
	if key == n.key && !n.created.Load() {
		return &sim.NoPortGroupError{Host: "test", Key: key}
	}
	return n.HostNetwork.Carry(ctx, key)
}

// A state that fails only on a port group vCenter does not have yet is
// tried again within seconds, not after NetworkRetry: the host carries
// the port group soon after network-config creates it, without a new
// state (network-config's is unchanged).
func TestAPortGroupCreatedLaterIsCarriedSoon(t *testing.T) {
	privtest.Require(t, "simulated hosts' segments are Linux bridges")
	agent, err := simtest.AgentBinary()
	if err != nil {
		t.Fatalf("build podvm-agent: %v", err)
	}
	b := bustest.Start(t)
	d, channels := simtest.StartWithGuests(t, 1, agent)
	x := d.Hosts()[0].Name
	key := simtest.AddPortGroup(t, simtest.Client(t, d), d.DVS(), "pv-a")
	segs := &notCreatedYet{HostNetwork: d.HostSegments(x), key: key}
	if err := segs.Drop(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	run := startNetAgent(t, b, x, channels, segs, func(c *hostagent.Config) {
		c.NetworkResync, c.NetworkRetry = time.Hour, time.Hour
	})
	pgs := []events.HostPortGroup{{Network: "a", PortGroup: "pv-a", Key: key, VLAN: 10, Version: 1}}
	run.publish(&events.NetworkHostDesired{Host: x, Digest: events.HostStateDigest(pgs), PortGroups: pgs})
	if r := run.next("while vCenter has no pv-a"); len(r.Failed) != 1 || r.Failed[0].Reason != hostagent.ReasonPortGroupNotFound {
		t.Fatalf("applied %+v; want pv-a failed with %s", r, hostagent.ReasonPortGroupNotFound)
	}
	// Both applies of the state (the start's read of the stream and the
	// consumer's delivery) have failed before vCenter has it.
	waitConsumed(t, b, x, 1)
	segs.created.Store(true)
	for {
		r := run.next("once vCenter has pv-a")
		if slices.Equal(r.Added, []string{"pv-a"}) && len(r.Failed) == 0 {
			break
		}
		if len(r.Failed) != 1 || r.Failed[0].Reason != hostagent.ReasonPortGroupNotFound {
			t.Fatalf("applied %+v; want pv-a added", r)
		}
	}
}

// waitConsumed waits for the host's consumer to have acknowledged n
// messages.
func waitConsumed(t *testing.T, b *bus.Bus, host string, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := consumerInfo(context.Background(), b, host)
		if err == nil && info.AckFloor.Consumer >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer of %s: %+v, %v; want %d acknowledged", host, info, err, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func consumerInfo(ctx context.Context, b *bus.Bus, host string) (*jetstream.ConsumerInfo, error) {
	st, err := b.JetStream().Stream(ctx, events.StreamNetworks)
	if err != nil {
		return nil, err
	}
	for name := range st.ListConsumers(ctx).Info() {
		if name.Config.FilterSubject == events.SubjectNetworkHostDesiredFor(host) || strings.Contains(name.Name, host) {
			return name, nil
		}
	}
	return nil, fmt.Errorf("no consumer of host %s on %s", host, events.StreamNetworks)
}

// unreachable is a host whose vCenter stops answering when down is set; it
// notes when the host's port groups were read.
type unreachable struct {
	down  atomic.Bool
	mu    sync.Mutex
	reads []time.Time
}

func (u *unreachable) Carried(context.Context) (map[string]string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.down.Load() {
		return map[string]string{}, nil
	}
	u.reads = append(u.reads, time.Now())
	return nil, errors.New("vCenter does not answer")
}

func (u *unreachable) Carry(context.Context, string) error { return errors.New("refused") }
func (u *unreachable) Drop(context.Context, string) error  { return nil }

func (u *unreachable) readsWhileDown() []time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.reads)
}

// A state that arrives while vCenter does not answer is applied once it
// answers, though its delivery was answered with an error.
func TestAStateReceivedWhileVCenterIsDownIsAppliedWhenItAnswers(t *testing.T) {
	b := bustest.Start(t)
	host := &unreachable{}
	host.down.Store(true)
	run := startNetAgent(t, b, "esx-y", t.TempDir(), host, func(c *hostagent.Config) {
		c.NetworkRetry, c.NetworkResync = time.Second, time.Hour
	})
	pgs := []events.HostPortGroup{{Network: "a", PortGroup: "pv-a", Key: "dvportgroup-1", VLAN: 10, Version: 1}}
	run.publish(&events.NetworkHostDesired{Host: "esx-y", Digest: events.HostStateDigest(pgs), PortGroups: pgs})
	testenv.Eventually(t, "the state read while vCenter is down", 20*time.Second, func() bool { return len(host.readsWhileDown()) > 0 })
	host.down.Store(false)
	if r := run.next("once vCenter answers"); len(r.Failed) != 1 || r.Failed[0].PortGroup != "pv-a" {
		t.Errorf("applied %+v; want pv-a tried (and refused by this host's fake)", r)
	}
}

// While vCenter does not answer, the agent reads the host's state again
// every NetworkRetry, not on every tick of its loop.
func TestAnUnreachableVCenterIsAskedEveryNetworkRetry(t *testing.T) {
	b := bustest.Start(t)
	host := &unreachable{}
	run := startNetAgent(t, b, "esx-x", t.TempDir(), host, func(c *hostagent.Config) {
		c.NetworkRetry, c.NetworkResync = time.Second, time.Minute
	})
	pgs := []events.HostPortGroup{{Network: "a", PortGroup: "pv-a", Key: "dvportgroup-1", VLAN: 10, Version: 1}}
	run.publish(&events.NetworkHostDesired{Host: "esx-x", Digest: events.HostStateDigest(pgs), PortGroups: pgs})
	run.next("for the state (CarryFailed)")
	host.down.Store(true)
	var reads []time.Time
	testenv.Eventually(t, "three reads while vCenter is down", 20*time.Second, func() bool {
		reads = host.readsWhileDown()
		return len(reads) >= 3
	})
	for i := 1; i < len(reads); i++ {
		if gap := reads[i].Sub(reads[i-1]); gap < 900*time.Millisecond {
			t.Errorf("read %d came %s after the one before; want NetworkRetry (1s) apart", i, gap)
		}
	}
}

// memHost is a host's port groups in memory, whose first failReads reads
// fail as when vCenter does not answer.
type memHost struct {
	mu        sync.Mutex
	names     map[string]string // what vCenter has, key → name
	carried   map[string]string
	failReads int
	reads     int
}

func (h *memHost) Carried(context.Context) (map[string]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reads++
	if h.failReads > 0 {
		h.failReads--
		return nil, errors.New("vCenter does not answer")
	}
	return maps.Clone(h.carried), nil
}

func (h *memHost) Carry(_ context.Context, key string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.carried[key] = h.names[key]
	return nil
}

func (h *memHost) Drop(_ context.Context, key string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.carried, key)
	return nil
}

func (h *memHost) state() (reads int, carried map[string]string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reads, maps.Clone(h.carried)
}

// A state whose apply failed comes back (its delivery retried) after the
// next state was applied: it is older, and neither applied then nor kept
// as the state the agent applies again.
func TestAnOlderStateRedeliveredAfterANewerOneIsNotApplied(t *testing.T) {
	b := bustest.Start(t)
	h := &memHost{names: map[string]string{"dvportgroup-1": "pv-a", "dvportgroup-2": "pv-b"}, carried: map[string]string{}, failReads: 1}
	const x = "esx-z"
	run := startNetAgent(t, b, x, t.TempDir(), h, func(c *hostagent.Config) {
		c.NetworkRetry, c.NetworkResync = time.Hour, 200*time.Millisecond
	})
	// The agent has read the last state of its subject (none) once its
	// consumer exists: the first read of the host is the first state's.
	testenv.Eventually(t, "the agent's consumer", 20*time.Second, func() bool {
		_, err := consumerInfo(context.Background(), b, x)
		return err == nil
	})
	older := []events.HostPortGroup{{Network: "a", PortGroup: "pv-a", Key: "dvportgroup-1", VLAN: 10, Version: 1}}
	newer := []events.HostPortGroup{{Network: "b", PortGroup: "pv-b", Key: "dvportgroup-2", VLAN: 11, Version: 1}}
	run.publish(&events.NetworkHostDesired{Host: x, Digest: events.HostStateDigest(older), PortGroups: older})
	testenv.Eventually(t, "the older state's apply failing", 20*time.Second, func() bool { reads, _ := h.state(); return reads >= 1 })
	run.publish(&events.NetworkHostDesired{Host: x, Digest: events.HostStateDigest(newer), PortGroups: newer})
	if r := run.next("for the newer state"); !slices.Equal(r.Added, []string{"pv-b"}) {
		t.Fatalf("applied %+v; want pv-b added", r)
	}
	// The older state's second delivery, after the newer one's.
	testenv.Eventually(t, "the older state delivered again and settled", 20*time.Second, func() bool {
		info, err := consumerInfo(context.Background(), b, x)
		return err == nil && info.Delivered.Consumer >= 3 && info.NumAckPending == 0
	})
	// And the last state applied again since.
	after, _ := h.state()
	testenv.Eventually(t, "the last state applied again", 20*time.Second, func() bool { reads, _ := h.state(); return reads >= after+2 })
	if _, carried := h.state(); !maps.Equal(carried, map[string]string{"dvportgroup-2": "pv-b"}) {
		t.Fatalf("the host carries %v; want only pv-b, the newer state's", carried)
	}
}
