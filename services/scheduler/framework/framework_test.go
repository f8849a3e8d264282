package framework_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework"
	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
	"github.com/podvisor/podvisor/services/scheduler/plugins"
)

const gib = fwtest.GiB

func newFramework(t testing.TB, p framework.Profile, snap *framework.Snapshot) *framework.Framework {
	t.Helper()
	f, err := framework.New(p, plugins.NewRegistry(), snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestStrategyChoosesHost(t *testing.T) {
	hosts := func() *framework.Snapshot {
		return framework.NewSnapshot(
			fwtest.MakeHost("busy").Capacity(10000, 10*gib).Used(6000, 6*gib).Obj(),
			fwtest.MakeHost("idle").Capacity(10000, 10*gib).Obj(),
		)
	}
	tests := []struct {
		strategy string
		want     string
	}{
		{framework.StrategyBinpack, "busy"},
		{framework.StrategySpread, "idle"},
	}
	for _, tt := range tests {
		t.Run(tt.strategy, func(t *testing.T) {
			f := newFramework(t, plugins.DefaultProfile(tt.strategy), hosts())
			res, err := f.Schedule(context.Background(), fwtest.MakePod("p").Size(1000, gib).Info())
			if err != nil {
				t.Fatal(err)
			}
			if res.Host.Name != tt.want {
				t.Errorf("host = %s, want %s", res.Host.Name, tt.want)
			}
		})
	}
}

func TestUnschedulableDiagnosis(t *testing.T) {
	var hs []*framework.Host
	for i := 0; i < 10; i++ {
		hs = append(hs, fwtest.MakeHost("mem-"+string(rune('a'+i))).Capacity(64000, 8*gib).Used(0, 6*gib).Obj())
	}
	for i := 0; i < 6; i++ {
		hs = append(hs, fwtest.MakeHost("net-"+string(rune('a'+i))).Network("default", framework.NetworkAbsent).Obj())
	}
	f := newFramework(t, plugins.DefaultProfile(framework.StrategyBinpack), framework.NewSnapshot(hs...))
	_, err := f.Schedule(context.Background(), fwtest.MakePod("p").Size(1000, 4*gib).Info())
	var fe *framework.FitError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v, want a FitError", err)
	}
	const want = "0/16 hosts: 10 insufficient memory, 6 network backend not on host"
	if got := fe.Error(); got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if fe.Diagnosis.Reasons["InsufficientMemory"] != 10 || fe.Diagnosis.Reasons["NetworkNotOnHost"] != 6 {
		t.Errorf("reasons = %v", fe.Diagnosis.Reasons)
	}
	if fe.Diagnosis.Unresolvable {
		t.Error("diagnosis unresolvable, but memory can free up")
	}
}

func TestImpossiblePodNamesTheResource(t *testing.T) {
	f := newFramework(t, plugins.DefaultProfile(framework.StrategyBinpack), framework.NewSnapshot(
		fwtest.MakeHost("a").Capacity(64000, 256*gib).Obj(), fwtest.MakeHost("b").Capacity(64000, 512*gib).Obj()))
	_, err := f.Schedule(context.Background(), fwtest.MakePod("huge").Size(1000, 600*gib).Info())
	var fe *framework.FitError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v", err)
	}
	if !strings.Contains(fe.Error(), "2 pod memory exceeds host capacity") || !fe.Diagnosis.Unresolvable {
		t.Errorf("diagnosis = %q unresolvable=%v", fe.Error(), fe.Diagnosis.Unresolvable)
	}
}

func TestExcludedHost(t *testing.T) {
	f := newFramework(t, plugins.DefaultProfile(framework.StrategyBinpack), framework.NewSnapshot(
		fwtest.MakeHost("src").Used(8000, 8*gib).Obj(), fwtest.MakeHost("dst").Obj()))
	res, err := f.Schedule(context.Background(), fwtest.MakePod("p").Exclude("src").Info())
	if err != nil || res.Host.Name != "dst" {
		t.Fatalf("res = %+v, err = %v; want dst", res, err)
	}
}

// A bounded search must still visit every host over successive pods, and
// an infeasible pod must be checked against all of them.
func TestBoundedSearchRotates(t *testing.T) {
	var hs []*framework.Host
	for i := 0; i < 1000; i++ {
		hs = append(hs, fwtest.MakeHost(hostName(i)).Obj())
	}
	snap := framework.NewSnapshot(hs...)
	p := plugins.DefaultProfile(framework.StrategySpread)
	p.PercentageOfHostsToScore = 10
	f := newFramework(t, p, snap)
	res, err := f.Schedule(context.Background(), fwtest.MakePod("p").Info())
	if err != nil {
		t.Fatal(err)
	}
	if res.Evaluated != 100 || res.Feasible != 100 {
		t.Errorf("evaluated %d feasible %d, want 100/100", res.Evaluated, res.Feasible)
	}
	seen := map[string]bool{}
	for i := 0; i < 10; i++ {
		res, err := f.Schedule(context.Background(), fwtest.MakePod("p").Size(1, 1).Info())
		if err != nil {
			t.Fatal(err)
		}
		seen[res.Host.Name] = true
	}
	if len(seen) < 10 {
		t.Errorf("10 pods went to %d hosts: the search does not rotate", len(seen))
	}
	_, err = f.Schedule(context.Background(), fwtest.MakePod("big").Size(1, 1000*gib).Info())
	var fe *framework.FitError
	if !errors.As(err, &fe) || fe.Diagnosis.Reasons["MemoryExceedsCapacity"] != 1000 {
		t.Fatalf("err = %v, want all 1000 hosts counted", err)
	}
}

func hostName(i int) string {
	const digits = "0123456789"
	return "h" + string(digits[i/100%10]) + string(digits[i/10%10]) + string(digits[i%10])
}

func TestProfileValidation(t *testing.T) {
	p := framework.Profile{Name: "bad", Strategy: "pack", Filters: []string{"Nope"},
		Scores: []framework.PluginWeight{{Name: "MostAllocated", Weight: 0}}, PercentageOfHostsToScore: 101, CPUOvercommit: 0.5}
	err := p.Validate(plugins.NewRegistry())
	if err == nil {
		t.Fatal("bad profile accepted")
	}
	for _, want := range []string{"strategy", `unknown plugin "Nope"`, "scores[0].weight", "percentageOfHostsToScore", "cpuOvercommit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if err := plugins.NewRegistry().Register("HostReady", nil); err == nil {
		t.Error("duplicate plugin registration accepted")
	}
	p = plugins.DefaultProfile(framework.StrategyBinpack)
	p.Filters = append(p.Filters, "MostAllocated")
	if _, err := framework.New(p, plugins.NewRegistry(), framework.NewSnapshot(), nil); err == nil || !strings.Contains(err.Error(), "not a filter") {
		t.Errorf("score plugin as filter: err = %v", err)
	}
}

func TestCPUCapacity(t *testing.T) {
	p := framework.Profile{}
	if got := p.CPUCapacityMilli(32); got != 32000 {
		t.Errorf("default overcommit: %d, want 32000", got)
	}
	p.CPUOvercommit = 1.5
	if got := p.CPUCapacityMilli(32); got != 48000 {
		t.Errorf("1.5 overcommit: %d, want 48000", got)
	}
}

// recordingReserve records reserve calls so that the undo order can be
// checked.
type recordingReserve struct {
	name string
	fail bool
	log  *[]string
}

func (r *recordingReserve) Name() string { return r.name }
func (r *recordingReserve) Reserve(context.Context, *framework.CycleState, *framework.PodInfo, *framework.Host) *framework.Status {
	*r.log = append(*r.log, "reserve "+r.name)
	if r.fail {
		return framework.NewStatus(framework.Unschedulable, "Refused", "refused")
	}
	return nil
}
func (r *recordingReserve) Unreserve(context.Context, *framework.CycleState, *framework.PodInfo, *framework.Host) {
	*r.log = append(*r.log, "unreserve "+r.name)
}

func TestReserveUndoesInReverse(t *testing.T) {
	var log []string
	reg := plugins.NewRegistry()
	for _, r := range []*recordingReserve{{name: "A", log: &log}, {name: "B", log: &log}, {name: "C", fail: true, log: &log}} {
		r := r
		reg.Register(r.name, func(framework.Handle) (framework.Plugin, error) { return r, nil })
	}
	p := plugins.DefaultProfile(framework.StrategyBinpack)
	p.Reserves = []string{"A", "B", "C"}
	snap := framework.NewSnapshot(fwtest.MakeHost("h").Obj())
	f, err := framework.New(p, reg, snap, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := f.RunReserve(context.Background(), framework.NewCycleState(), fwtest.MakePod("p").Info(), snap.Hosts()[0])
	if st.IsSuccess() {
		t.Fatal("reserve succeeded despite C failing")
	}
	want := "reserve A,reserve B,reserve C,unreserve B,unreserve A"
	if got := strings.Join(log, ","); got != want {
		t.Errorf("calls = %s, want %s", got, want)
	}
}

// The host's VM count follows its pods through every change: pods added
// and removed, the ledger's set, and an inventory update (SetHost with no
// pods keeps the host's, VMs among them).
func TestHostCountsItsVMsThroughEveryChange(t *testing.T) {
	vm := fwtest.MakePod("vm1").VM().Ref()
	snap := framework.NewSnapshot(fwtest.MakeHost("h").Capacity(10000, 10*gib).Pod(vm).Used(1, 1).Obj())
	h, _ := snap.Host("h")
	counts := func(when string, pods, vms int) {
		t.Helper()
		h, _ := snap.Host("h")
		if h.PodCount() != pods || h.VMCount() != vms {
			t.Fatalf("%s: %d pods, %d VMs; want %d and %d", when, h.PodCount(), h.VMCount(), pods, vms)
		}
	}
	counts("built", 1, 1)
	snap.SetHost(fwtest.MakeHost("h").Capacity(10000, 10*gib).Obj())
	counts("after an inventory update", 1, 1)
	h, _ = snap.Host("h")
	h.RemovePod(vm.Key)
	counts("after the VM's removal", 1, 0)
	snap.SetPods("h", []*framework.PodRef{vm, fwtest.MakePod("vm2").VM().Ref()}, 2)
	counts("after the ledger's set", 0, 2)
}
