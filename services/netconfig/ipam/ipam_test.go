package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/ipam"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

func ipamKV(t *testing.T) (jetstream.KeyValue, jetstream.JetStream) {
	t.Helper()
	b := bustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := b.KV(ctx, bus.BucketIPAM)
	if err != nil {
		t.Fatal(err)
	}
	return kv, b.JetStream()
}

func pool(t *testing.T, name, cidr, gw string) ipam.Pool {
	t.Helper()
	p, err := ipam.PoolOf(name, events.NetworkSpec{CIDR: cidr, Gateway: gw})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func owner(i int) ipam.Owner {
	return ipam.Owner{Namespace: "default", Name: fmt.Sprintf("web-%d", i), UID: fmt.Sprintf("uid-%d", i), Host: "h1"}
}

func TestUsable(t *testing.T) {
	tests := []struct {
		name, cidr, gw string
		want           int
	}{
		{"slash24 no gateway", "10.0.0.0/24", "", 254},
		{"slash24 with gateway", "10.0.0.0/24", "10.0.0.1", 253},
		{"slash30 with gateway", "10.0.0.0/30", "10.0.0.1", 1},
		{"slash16", "10.88.0.0/16", "10.88.0.1", 65533},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pool(t, "n", tt.cidr, tt.gw).Usable(); got != tt.want {
				t.Fatalf("Usable() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestHolds(t *testing.T) {
	tests := []struct {
		name, cidr, gw, ip string
		want               bool
	}{
		{"inside", "10.0.0.0/24", "10.0.0.1", "10.0.0.7", true},
		{"outside", "10.0.0.0/24", "10.0.0.1", "10.0.1.7", false},
		{"network address", "10.0.0.0/24", "", "10.0.0.0", false},
		{"broadcast address", "10.0.0.0/24", "", "10.0.0.255", false},
		{"gateway", "10.0.0.0/24", "10.0.0.1", "10.0.0.1", false},
		{"narrower prefix cuts the top off", "10.0.0.0/25", "10.0.0.1", "10.0.0.200", false},
		{"wider prefix keeps it", "10.0.0.0/23", "10.0.0.1", "10.0.0.255", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := pool(t, "n", tt.cidr, tt.gw).Holds(netip.MustParseAddr(tt.ip)); got != tt.want {
				t.Fatalf("%s holds %s = %v, want %v", tt.cidr, tt.ip, got, tt.want)
			}
		})
	}
}

func TestPoolOfRejectsBadInput(t *testing.T) {
	for _, spec := range []events.NetworkSpec{{CIDR: "10.0.0.1/24"}, {CIDR: "nope"}, {CIDR: "10.0.0.0/24", Gateway: "10.1.0.1"}} {
		if _, err := ipam.PoolOf("n", spec); !errors.Is(err, ipam.ErrInvalidPool) {
			t.Errorf("PoolOf(%+v) = %v, want ErrInvalidPool", spec, err)
		}
	}
}

func TestAllocateIsIdempotentAndSkipsGateway(t *testing.T) {
	ctx := context.Background()
	a := ipam.New(ipamKV(t))
	p := pool(t, "frontend", "10.20.0.0/24", "10.20.0.1")

	first, err := a.Allocate(ctx, p, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if first.IP != "10.20.0.2" {
		t.Fatalf("first address = %s, want 10.20.0.2 (network and gateway reserved)", first.IP)
	}
	again, err := a.Allocate(ctx, p, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if again.IP != first.IP || again.MAC != first.MAC {
		t.Fatalf("retried allocation = %s/%s, want the same %s/%s", again.IP, again.MAC, first.IP, first.MAC)
	}
	moved := owner(1)
	moved.Host = "h2"
	if got, err := a.Allocate(ctx, p, moved); err != nil || got.IP != first.IP || got.Host != "h2" {
		t.Fatalf("allocation from another host = %+v, %v; want same IP bound to h2", got, err)
	}
	if n, _ := a.Count(ctx, "frontend"); n != 1 {
		t.Fatalf("Count = %d, want 1", n)
	}
}

func TestConcurrentAllocationsAreUnique(t *testing.T) {
	ctx := context.Background()
	kv, js := ipamKV(t)
	p := pool(t, "frontend", "10.20.0.0/24", "10.20.0.1")
	const pods = 60
	var wg sync.WaitGroup
	ips := make([]string, pods)
	errs := make([]error, pods)
	for i := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One allocator per goroutine: as if every pod were handled by a
			// different replica; only the bucket is shared.
			got, err := ipam.New(kv, js).Allocate(ctx, p, owner(i))
			ips[i], errs[i] = got.IP, err
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range pods {
		if errs[i] != nil {
			t.Fatalf("pod %d: %v", i, errs[i])
		}
		ip := netip.MustParseAddr(ips[i])
		if !p.Prefix.Contains(ip) || ips[i] == "10.20.0.1" || ips[i] == "10.20.0.0" {
			t.Fatalf("pod %d got %s, outside the usable range of %s", i, ips[i], p.Prefix)
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	if n, _ := ipam.New(kv, js).Count(ctx, "frontend"); n != pods {
		t.Fatalf("Count = %d, want %d", n, pods)
	}
}

func TestExhaustionAndReuse(t *testing.T) {
	ctx := context.Background()
	a := ipam.New(ipamKV(t))
	p := pool(t, "tiny", "10.9.0.0/29", "10.9.0.1") // 6 host addresses, gateway reserved: 5 usable
	for i := range 5 {
		if _, err := a.Allocate(ctx, p, owner(i)); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	_, err := a.Allocate(ctx, p, owner(5))
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("sixth allocation: %v, want ErrExhausted", err)
	}
	t.Logf("exhaustion error: %v", err)

	ip, err := a.Release(ctx, "tiny", owner(2).UID)
	if err != nil || ip == "" {
		t.Fatalf("Release = %q, %v", ip, err)
	}
	if again, err := a.Release(ctx, "tiny", owner(2).UID); err != nil || again != "" {
		t.Fatalf("second Release = %q, %v; want nothing released", again, err)
	}
	got, err := a.Allocate(ctx, p, owner(5))
	if err != nil {
		t.Fatalf("allocation after release: %v", err)
	}
	if got.IP != ip {
		t.Fatalf("allocation after release got %s, want the freed %s", got.IP, ip)
	}
}

func TestMoveAndLookup(t *testing.T) {
	ctx := context.Background()
	a := ipam.New(ipamKV(t))
	p := pool(t, "db", "10.30.0.0/24", "")
	alloc, err := a.Allocate(ctx, p, owner(1))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Move(ctx, "db", owner(1).UID, "h9"); !ok || err != nil {
		t.Fatalf("Move = %v, %v", ok, err)
	}
	got, ok, err := a.Lookup(ctx, "db", owner(1).UID)
	if err != nil || !ok || got.Host != "h9" || got.IP != alloc.IP {
		t.Fatalf("Lookup after move = %+v, %v, %v", got, ok, err)
	}
	if ok, err := a.Move(ctx, "db", "nobody", "h9"); ok || err != nil {
		t.Fatalf("Move of a pod without address = %v, %v; want false, nil", ok, err)
	}
}

func TestMACIsStableAndInVMwareStaticRange(t *testing.T) {
	a, b := ipam.MAC("net", "uid-1"), ipam.MAC("net", "uid-1")
	if a != b {
		t.Fatalf("MAC not deterministic: %s vs %s", a, b)
	}
	if a == ipam.MAC("net", "uid-2") {
		t.Fatalf("two pods share MAC %s", a)
	}
	var x byte
	if _, err := fmt.Sscanf(a, "00:50:56:%02x:", &x); err != nil || x > 0x3f {
		t.Fatalf("MAC %s outside 00:50:56:00-3f:xx:xx (%v)", a, err)
	}
}

// TestOnePodAllocatedByTwoReplicasAtOnceHoldsOneAddress: a pod placed twice
// (two pod.scheduled, handled by two replicas at the same moment) asks
// twice for an address. Before, the second allocation moved the pod's
// binding to its own address, and the first address stayed behind with no
// binding: a leak no release could find. Every attempt now ends with the
// pod holding one address, the one its binding names, and the release
// frees it all.
func TestOnePodAllocatedByTwoReplicasAtOnceHoldsOneAddress(t *testing.T) {
	ctx := context.Background()
	kv, js := ipamKV(t)
	p := pool(t, "twice", "10.21.0.0/24", "")
	for i := range 20 {
		o := owner(i)
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				// Each replica retries as a redelivery would, until it gets
				// an answer.
				for try := 0; try < 50; try++ {
					if _, err := ipam.New(kv, js).Allocate(ctx, p, o); err == nil {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
				t.Errorf("pod %d: no address after 50 tries", i)
			})
		}
		wg.Wait()
		if _, err := ipam.New(kv, js).Release(ctx, "twice", o.UID); err != nil {
			t.Fatal(err)
		}
		if n, err := ipam.New(kv, js).Count(ctx, "twice"); err != nil || n != 0 {
			t.Fatalf("attempt %d: %d addresses left after the pod's release (%v); want 0", i, n, err)
		}
	}
}

// countingKV counts the reads of each key.
type countingKV struct {
	jetstream.KeyValue
	mu    sync.Mutex
	reads map[string]int
}

func (c *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	c.mu.Lock()
	c.reads[key]++
	c.mu.Unlock()
	return c.KeyValue.Get(ctx, key)
}

// A pod's first allocation reads its binding once: the read that finds no
// allocation tells the bind that follows to Create the binding at once
// (it was read twice, each a round trip on an attach's path). The second
// allocation (another network, the hint path) and a repeat of the first
// return what the pod holds.
func TestFreshAllocationReadsItsBindingOnce(t *testing.T) {
	ipkv, js := ipamKV(t)
	kv := &countingKV{KeyValue: ipkv, reads: map[string]int{}}
	a := ipam.New(kv, js)
	ctx := context.Background()
	p := pool(t, "net", "10.9.0.0/24", "10.9.0.1")
	for i := range 3 { // the first scans; the others take the hint
		o := owner(i)
		first, err := a.Allocate(ctx, p, o)
		if err != nil {
			t.Fatal(err)
		}
		if n := kv.reads[events.IPPodBindingKey("net", o.UID)]; n != 1 {
			t.Errorf("allocation %d read the pod's binding %d times, want 1", i, n)
		}
		again, err := a.Allocate(ctx, p, o)
		if err != nil || again.IP != first.IP {
			t.Fatalf("repeat of allocation %d = %s, %v; want %s", i, again.IP, err, first.IP)
		}
	}
}

// Allocations lists the addresses held, on the network asked only: a
// released address (its key deleted) is left out, and so are the
// addresses of a network whose name the first one's starts with.
func TestAllocationsListsTheAddressesHeld(t *testing.T) {
	a := ipam.New(ipamKV(t))
	ctx := context.Background()
	web, webby := pool(t, "web", "10.9.0.0/24", "10.9.0.1"), pool(t, "webby", "10.8.0.0/24", "10.8.0.1")
	for i := range 4 {
		if _, err := a.Allocate(ctx, web, owner(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Allocate(ctx, webby, owner(9)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Release(ctx, "web", owner(1).UID); err != nil {
		t.Fatal(err)
	}
	allocs, err := a.Allocations(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, al := range allocs {
		got = append(got, al.UID)
	}
	slices.Sort(got)
	if want := []string{"uid-0", "uid-2", "uid-3"}; !slices.Equal(got, want) {
		t.Fatalf("allocations of web: %v, want %v", got, want)
	}
}
