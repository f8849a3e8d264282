package ipam

import (
	"errors"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// A hold nobody keeps, releases or settles (a change whose put's outcome
// was unknown and whose record could not be read again, or whose process
// died) lapses HoldLease after it was taken: an allocation from the record
// the change read is refused before and commits after, with no write of
// the record, and its fence write drops the hold for every allocator.
func TestAnUnsettledHoldLapses(t *testing.T) {
	ctx, _, allocators := startAllocators(t, 3)
	changer, now, later := allocators[0], allocators[1], allocators[2]
	later.now = func() time.Time { return time.Now().Add(HoldLease) }
	old, err := PoolOf("n", events.NetworkSpec{CIDR: "10.9.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	old.Record = 5
	if _, err := changer.HoldAddressing(ctx, "n", 6); err != nil {
		t.Fatal(err)
	}
	owner := func(uid string) Owner { return Owner{Namespace: "default", Name: uid, UID: uid, Host: "h1"} }
	if _, err := now.Allocate(ctx, old, owner("before")); !errors.Is(err, ErrReaddressing) {
		t.Fatalf("allocation from the old record while the hold stands: %v, want ErrReaddressing", err)
	}
	if _, err := later.Allocate(ctx, old, owner("after")); err != nil {
		t.Fatalf("allocation from the old record once the hold lapsed: %v", err)
	}
	var stored fence
	if _, _, err := now.getJSON(ctx, fenceKey("n"), &stored); err != nil || len(stored.Holds) != 0 || len(stored.Expires) != 0 || stored.MinRecord != 0 {
		t.Fatalf("fence stored after the lapsed hold's allocation: %+v (%v), want no hold and no floor", stored, err)
	}
	if _, err := now.Allocate(ctx, old, owner("again")); err != nil {
		t.Fatalf("allocation from the old record after the hold was dropped: %v", err)
	}
}
