package rebalance

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/events"
)

const gib = int64(1) << 30

func hostRec(name, cluster string, cpuCores, memGiB int64, mods ...func(*events.HostRecord)) *events.HostRecord {
	r := &events.HostRecord{
		HostInfo:         events.HostInfo{Name: name, Cluster: cluster, ConnectionState: events.HostConnected, Datastores: []string{"shared-ds"}},
		CPUCapacityMilli: cpuCores * 1000, MemoryCapacityBytes: memGiB * gib,
	}
	for _, m := range mods {
		m(r)
	}
	return r
}

func podRec(name, host string, memGiB int64, networks ...string) *events.PodRecord {
	if len(networks) == 0 {
		networks = []string{"default"}
	}
	return &events.PodRecord{
		UID: "uid-" + name, Namespace: "default", Name: name, Host: host, Phase: events.PodPhaseRunning, VMRef: "vm-" + name,
		Size: events.PodVMSize{CPUMilli: 500, MemoryBytes: memGiB * gib, MemoryMiB: memGiB * 1024}, Networks: networks,
		Datastores: []string{"shared-ds"},
	}
}

func avail(name string, hosts ...string) *events.NetworkAvailability {
	slices.Sort(hosts)
	return &events.NetworkAvailability{Network: name, Version: 1, Hosts: hosts, Scope: hosts}
}

func moves(ms []Move) string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s:%s>%s", m.Pod, m.From, m.To))
	}
	return strings.Join(out, " ")
}

func TestPlan(t *testing.T) {
	everywhere := map[string]*events.NetworkAvailability{"default": avail("default", "h1", "h2", "h3", "h4")}
	tests := []struct {
		name  string
		hosts []*events.HostRecord
		pods  []*events.PodRecord
		nets  map[string]*events.NetworkAvailability
		opts  Options
		want  string
	}{
		{
			name:  "moves from the loaded host to the empty one until even",
			hosts: []*events.HostRecord{hostRec("h1", "c1", 16, 16), hostRec("h2", "c1", 16, 16)},
			pods:  []*events.PodRecord{podRec("a", "h1", 4), podRec("b", "h1", 4), podRec("c", "h1", 4), podRec("d", "h1", 4)},
			nets:  everywhere,
			want:  "a:h1>h2 b:h1>h2",
		},
		{
			name:  "balanced hosts stay",
			hosts: []*events.HostRecord{hostRec("h1", "c1", 16, 16), hostRec("h2", "c1", 16, 16)},
			pods:  []*events.PodRecord{podRec("a", "h1", 4), podRec("b", "h2", 4)},
			nets:  everywhere,
			want:  "",
		},
		{
			name:  "a pod goes only where its network is realized",
			hosts: []*events.HostRecord{hostRec("h1", "c1", 16, 16), hostRec("h2", "c2", 16, 16), hostRec("h3", "c1", 16, 64)},
			pods:  []*events.PodRecord{podRec("db", "h1", 8, "backend"), podRec("web", "h1", 4)},
			nets:  map[string]*events.NetworkAvailability{"default": avail("default", "h1", "h2", "h3"), "backend": avail("backend", "h1")},
			want:  "web:h1>h3", // db (backend, on h1 only) stays
		},
		{
			name: "cordoned, lost and full hosts take nothing",
			hosts: []*events.HostRecord{
				hostRec("h1", "c1", 16, 16),
				hostRec("h2", "c1", 16, 16, func(r *events.HostRecord) { r.Cordoned = true }),
				hostRec("h3", "c1", 16, 16, func(r *events.HostRecord) { r.ConnectionState = events.HostNotResponding }),
				hostRec("h4", "c1", 16, 16, func(r *events.HostRecord) { r.MaxPods = 1 }),
			},
			pods: []*events.PodRecord{podRec("a", "h1", 4), podRec("b", "h1", 4), podRec("c", "h1", 4), podRec("x", "h4", 1)},
			nets: everywhere,
			want: "",
		},
		{
			name:  "same cluster only",
			hosts: []*events.HostRecord{hostRec("h1", "c1", 16, 16), hostRec("h2", "c2", 16, 16)},
			pods:  []*events.PodRecord{podRec("a", "h1", 4), podRec("b", "h1", 4)},
			nets:  everywhere,
			opts:  Options{SameCluster: true},
			want:  "",
		},
		{
			name:  "bounded by MaxMoves",
			hosts: []*events.HostRecord{hostRec("h1", "c1", 64, 64), hostRec("h2", "c1", 64, 64)},
			pods:  []*events.PodRecord{podRec("a", "h1", 8), podRec("b", "h1", 8), podRec("c", "h1", 8), podRec("d", "h1", 8)},
			nets:  everywhere,
			opts:  Options{MaxMoves: 1},
			want:  "a:h1>h2",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := moves(Plan(tt.hosts, tt.pods, tt.nets, tt.opts)); got != tt.want {
				t.Errorf("plan %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPlanNeverWidensTheSpread checks, over many uneven layouts, that
// every planned move lowers the larger of its two hosts' loads and that
// the plan narrows the spread.
func TestPlanNeverWidensTheSpread(t *testing.T) {
	for seed := range 50 {
		hosts := []*events.HostRecord{hostRec("h1", "c1", 32, 64), hostRec("h2", "c1", 16, 32), hostRec("h3", "c1", 48, 128), hostRec("h4", "c1", 16, 16)}
		var pods []*events.PodRecord
		for i := range 20 {
			h := hosts[(i*7+seed)%len(hosts)].Name
			if i%3 == 0 {
				h = "h1"
			}
			pods = append(pods, podRec(fmt.Sprintf("p%d", i), h, int64(1+(i+seed)%4)))
		}
		nets := map[string]*events.NetworkAvailability{"default": avail("default", "h1", "h2", "h3", "h4")}
		before := spread(hosts, pods)
		plan := Plan(hosts, pods, nets, Options{MaxMoves: 20})
		for _, m := range plan {
			for _, p := range pods {
				if p.Name == m.Pod {
					p.Host = m.To
				}
			}
		}
		after := spread(hosts, pods)
		if after > before+1e-9 {
			t.Fatalf("seed %d: spread %.3f → %.3f after %s", seed, before, after, moves(plan))
		}
		for _, h := range hosts {
			if loadOf(h, pods) > 1+1e-9 {
				t.Fatalf("seed %d: host %s over capacity after %s", seed, h.Name, moves(plan))
			}
		}
	}
}

func loadOf(h *events.HostRecord, pods []*events.PodRecord) float64 {
	x := &host{rec: h}
	for _, p := range pods {
		if p.Host == h.Name {
			x.cpu += p.Size.CPUMilli
			x.mem += podMemory(p)
		}
	}
	return x.load()
}

func spread(hosts []*events.HostRecord, pods []*events.PodRecord) float64 {
	lo, hi := 2.0, -1.0
	for _, h := range hosts {
		l := loadOf(h, pods)
		lo, hi = min(lo, l), max(hi, l)
	}
	return hi - lo
}
