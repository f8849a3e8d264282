package provisioner

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"
)

// TestShardedFolder: with FolderShards set, the VM lands in the uid's shard.
func TestShardedFolder(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.FolderShards = 4
	e.start(cfg)
	acc, run := e.provision(testPod("sharded"), e.DC.Hosts()[0].Name)
	ctx := context.Background()
	var vm mo.VirtualMachine
	if err := e.vc.RetrieveOne(ctx, vmRef(run.VM), []string{"parent"}, &vm); err != nil {
		t.Fatal(err)
	}
	got, err := inventoryPath(ctx, e, *vm.Parent)
	if want := "/vm/" + cfg.vmFolder("default", acc.UID); err != nil || !strings.HasSuffix(got, want) {
		t.Errorf("VM folder %s (%v), want …%s", got, err, want)
	}
}

// BenchmarkPodToRunning measures pod.requested → pod.running through the
// bus and vcsim, with the other services' facts published at acceptance.
//
//	go test -run '^$' -bench PodToRunning -benchtime 50x ./services/provisioner
func BenchmarkPodToRunning(b *testing.B) {
	e := newEnv(b)
	e.start(testConfig())
	host := e.DC.Hosts()[0].Name
	b.ResetTimer()
	lat := runLatencies(e, b.N, host)
	b.StopTimer()
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// runLatencies provisions n pods one after the other on host and returns
// each one's request-to-running time, sorted.
func runLatencies(e *env, n int, host string) []time.Duration {
	var out []time.Duration
	for i := range n {
		name := fmt.Sprintf("bench-%d", i)
		start := time.Now()
		e.provision(testPod(name), host)
		out = append(out, time.Since(start))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
