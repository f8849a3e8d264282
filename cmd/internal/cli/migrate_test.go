package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// answer stands in for the scheduler and the migration service: it
// answers each event on subject with what reply returns, published as
// the services would.
func answer(t *testing.T, b *bus.Bus, subject string, reply func(p any) []events.Payload) {
	t.Helper()
	sub, err := b.Conn().Subscribe(subject, func(m *nats.Msg) {
		ev, err := bus.DecodeMessage(m)
		if err != nil {
			return
		}
		p, err := events.Decode(ev.Type(), ev.Data())
		if err != nil {
			return
		}
		go func() {
			for _, out := range reply(p) {
				e, err := bus.NewEvent("podvisor/test", typeOf(out), out.ObjectKey(), out)
				if err == nil {
					err = b.Publish(context.Background(), e)
				}
				if err != nil {
					t.Errorf("answer: %v", err)
				}
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Conn().Flush()
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

// runTool runs the CLI like a user whose environment names the NATS URL.
// It adds the migration verbs to the root when root.go does not yet.
func runTool(t *testing.T, natsURL string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	t.Setenv("PODVISOR_NATS_URL", natsURL)
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := NewRoot(strings.NewReader(""), &out, &errb)
	g := &globals{stateDir: t.TempDir(), stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	for name, mk := range map[string]func(*globals) *cobra.Command{
		"migrate": newMigrateCmd, "drain": newDrainCmd, "uncordon": newUncordonCmd, "sim": newSimCmd, "rebalance": newRebalanceCmd,
	} {
		if c, _, err := root.Find([]string{name}); err != nil || c == root {
			root.AddCommand(mk(g))
		}
	}
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return out.String(), errb.String(), 0
	}
	fmt.Fprintln(&errb, "error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return out.String(), errb.String(), ee.code
	}
	return out.String(), errb.String(), 1
}

// typeOf finds the catalog type of a payload.
func typeOf(p events.Payload) string {
	for _, k := range events.Kinds() {
		if reflect.TypeOf(k.New()) == reflect.TypeOf(p) {
			return k.Type
		}
	}
	return ""
}

func TestMigrateCLIPrintsTheOutcome(t *testing.T) {
	b := bustest.Start(t)
	url := b.Conn().ConnectedUrl()
	answer(t, b, events.SubjectMigrationRequested, func(p any) []events.Payload {
		r := p.(*events.MigrationRequested)
		if r.Pod == "ghost" {
			return []events.Payload{&events.MigrationRejected{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, Reason: "NotFound", Message: "pod default/ghost does not exist"}}
		}
		if r.TargetHost == "esx-2-01" {
			return []events.Payload{
				&events.MigrationTargetReserved{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, MigrationMove: events.MigrationMove{UID: "u1", SourceHost: "esx-1-01", TargetHost: r.TargetHost, TargetCluster: "cluster-2"}},
				&events.MigrationFailed{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, UID: "u1", SourceHost: "esx-1-01", TargetHost: r.TargetHost,
					Reason: "NetworkMissingOnTarget", Message: "network backend is not available on esx-2-01 (not in its scope)"},
			}
		}
		return []events.Payload{
			&events.MigrationTargetReserved{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, MigrationMove: events.MigrationMove{UID: "u1", SourceHost: "esx-1-01", TargetHost: "esx-1-02", TargetCluster: "cluster-1"}},
			&events.MigrationProgress{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, Phase: events.PhaseQueued, QueuePosition: 1, Message: "2 migrations already leave esx-1-01"},
			&events.MigrationProgress{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, Phase: events.PhaseRelocating, Percent: 50},
			&events.MigrationCompleted{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, MigrationMove: events.MigrationMove{UID: "u1", SourceHost: "esx-1-01", TargetHost: "esx-1-02", TargetCluster: "cluster-1"}},
		}
	})

	out, errOut, code := runTool(t, url, "migrate", "pod", "web", "--wait", "10s")
	if code != 0 || !strings.Contains(out, "target reserved: esx-1-02") || !strings.Contains(out, "queued: 1 ahead") ||
		!strings.Contains(out, "relocating 50%") || !strings.Contains(out, "migrated default/web: esx-1-01 → esx-1-02") {
		t.Errorf("migrate web: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runTool(t, url, "migrate", "pod", "db", "--to", "esx-2-01", "--wait", "10s")
	if code != 1 || !strings.Contains(out, "failed: NetworkMissingOnTarget: network backend") {
		t.Errorf("migrate db to a host without its network: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runTool(t, url, "migrate", "pod", "ghost", "-n", "default", "--wait", "10s")
	if code != 1 || !strings.Contains(out, "refused: NotFound: pod default/ghost does not exist") {
		t.Errorf("migrate ghost: code %d\n%s%s", code, out, errOut)
	}
	_, errOut, code = runTool(t, url, "migrate", "pod", "Bad_Name")
	if code != 2 || !strings.Contains(errOut, "pod") {
		t.Errorf("bad pod name: code %d, stderr %q; want a usage error naming the field", code, errOut)
	}
}

func TestGetMigrationsAndCancel(t *testing.T) {
	b := bustest.Start(t)
	url := b.Conn().ConnectedUrl()
	kv, err := b.KV(context.Background(), events.BucketMigrations)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for _, r := range []events.MigrationRecord{
		{ID: "m1", Namespace: "default", Pod: "web", SourceHost: "esx-1-01", TargetHost: "esx-1-03", Phase: events.PhaseQueued, QueuePosition: 1,
			Message: "2 migrations already leave esx-1-01", CreatedAt: now.Add(-30 * time.Second)},
		{ID: "m2", Namespace: "default", Pod: "db", SourceHost: "esx-1-01", TargetHost: "esx-2-01", Phase: events.MigrationPhaseFailed,
			Reason: "NetworkMissingOnTarget", Message: "network backend is not available on esx-2-01", CreatedAt: now.Add(-time.Minute)},
		{ID: "m3", Namespace: "other", Pod: "api", Phase: events.MigrationPhasePending, CreatedAt: now},
	} {
		data, _ := json.Marshal(r)
		if _, err := kv.Put(context.Background(), r.ID, data); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := runTool(t, url, "get", "migrations")
	if code != 0 {
		t.Fatalf("get migrations: %d %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAMESPACE POD FROM TO PHASE AGE REASON" {
		t.Fatalf("get migrations printed:\n%s", out)
	}
	if !strings.Contains(out, "Queued(#2)") || !strings.Contains(out, "NetworkMissingOnTarget: network backend") || strings.Contains(out, "api") {
		t.Errorf("get migrations printed:\n%s", out)
	}

	seen := make(chan *events.MigrationCancelRequested, 1)
	answer(t, b, events.SubjectMigrationCancelRequested, func(p any) []events.Payload {
		seen <- p.(*events.MigrationCancelRequested)
		return nil
	})
	out, errOut, code = runTool(t, url, "migrate", "cancel", "m1")
	if code != 0 || !strings.Contains(out, "cancel of migration m1 (default/web) requested") {
		t.Fatalf("cancel m1: %d\n%s%s", code, out, errOut)
	}
	select {
	case c := <-seen:
		if c.ID != "m1" || c.Pod != "web" {
			t.Errorf("cancel = %+v", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no cancel published")
	}
	if _, errOut, code := runTool(t, url, "migrate", "cancel", "m2"); code != 1 || !strings.Contains(errOut, "already ended") {
		t.Errorf("cancel of a failed migration: %d %s", code, errOut)
	}
}

func TestDrainCLIListsUnmovablePods(t *testing.T) {
	b := bustest.Start(t)
	url := b.Conn().ConnectedUrl()
	answer(t, b, events.SubjectHostDrainRequested, func(p any) []events.Payload {
		d := p.(*events.HostDrainRequested)
		out := []events.Payload{&events.HostCordoned{Name: d.Name, Reason: "Drain"},
			&events.MigrationCompleted{MigrationRef: events.MigrationRef{ID: "x1", Namespace: "default", Pod: "web"}, MigrationMove: events.MigrationMove{UID: "u1", SourceHost: d.Name, TargetHost: "esx-1-02", TargetCluster: "cluster-1"}}}
		if d.Name == "esx-1-01" {
			return append(out, &events.HostDrained{Name: d.Name, Migrated: 1})
		}
		return append(out, &events.HostDrained{Name: d.Name, Migrated: 1, Unmovable: []events.UnmovablePod{
			{Namespace: "default", Name: "db", UID: "u2", Reason: "NetworkMissingOnTarget", Message: "network local exists on this host only"}}})
	})
	out, errOut, code := runTool(t, url, "drain", "host", "esx-1-01", "--wait", "10s")
	if code != 0 || !strings.Contains(out, "host esx-1-01 cordoned") || !strings.Contains(out, "moved default/web to esx-1-02") ||
		!strings.Contains(out, "drained: 1 pod moved; the host is in maintenance mode") {
		t.Errorf("drain esx-1-01: %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runTool(t, url, "drain", "host", "esx-1-03", "--wait", "10s")
	if code != 1 || !strings.Contains(out, "default/db: NetworkMissingOnTarget (network local exists on this host only)") {
		t.Errorf("drain esx-1-03: %d\n%s%s", code, out, errOut)
	}
	// The drain record as the migration service writes it.
	drains, err := b.JetStream().CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: events.BucketDrains})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(&events.DrainRecord{Host: "esx-1-03", Phase: events.DrainPhaseIncomplete, Migrated: 1,
		Unmovable: []events.UnmovablePod{{Namespace: "default", Name: "db", Reason: "NetworkMissingOnTarget"}},
		Message:   "1 pods could not move", StartedAt: time.Now().Add(-time.Minute)})
	if _, err := drains.Put(context.Background(), events.DrainRecordKey("esx-1-03"), data); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runTool(t, url, "get", "drains")
	if code != 0 || !strings.Contains(out, "HOST") || !strings.Contains(out, "Incomplete") || !strings.Contains(out, "1 pods could not move") {
		t.Errorf("get drains: %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := runTool(t, url, "drain", "pod", "web"); code != 2 || !strings.Contains(errOut, "only hosts") {
		t.Errorf("drain pod: %d %s", code, errOut)
	}
	// The CLI asks; migration (played by the test) answers host.uncordoned,
	// which the CLI waits for.
	uncordoned := make(chan string, 1)
	answer(t, b, events.SubjectHostUncordonRequested, func(p any) []events.Payload {
		name := p.(*events.HostUncordonRequested).Name
		uncordoned <- name
		return []events.Payload{&events.HostUncordoned{Name: name}}
	})
	if out, errOut, code := runTool(t, url, "uncordon", "host", "esx-1-01"); code != 0 || !strings.Contains(out, "host esx-1-01 uncordoned") {
		t.Errorf("uncordon: %d %s%s", code, out, errOut)
	}
	select {
	case h := <-uncordoned:
		if h != "esx-1-01" {
			t.Errorf("uncordoned %s", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no host.uncordon.requested published")
	}
}

func TestSimCLIWithoutSimulator(t *testing.T) {
	b := bustest.Start(t)
	_, errOut, code := runTool(t, b.Conn().ConnectedUrl(), "sim", "host", "fail", "esx-1-01")
	if code != 1 || !strings.Contains(errOut, "no simulator answered") {
		t.Errorf("sim with no up running: %d %q", code, errOut)
	}
	if _, errOut, code := runTool(t, b.Conn().ConnectedUrl(), "sim", "host", "explode", "esx-1-01"); code != 2 || !strings.Contains(errOut, "want fail, recover or maintenance") {
		t.Errorf("sim host explode: %d %q", code, errOut)
	}
}

func TestRebalanceCLI(t *testing.T) {
	b := bustest.Start(t)
	url := b.Conn().ConnectedUrl()
	ctx := context.Background()
	put := func(bucket, key string, v any) { putRecord(t, ctx, b, bucket, key, v) }
	for _, h := range []string{"esx-1-01", "esx-1-02"} {
		put(events.BucketHosts, events.HostRecordKey(h), &events.HostRecord{
			HostInfo:         events.HostInfo{Name: h, Cluster: "cluster-1", ConnectionState: events.HostConnected, Datastores: []string{"shared-ds"}},
			CPUCapacityMilli: 16000, MemoryCapacityBytes: 16 << 30,
		})
	}
	put(events.BucketNetHosts, "default", &events.NetworkAvailability{Network: "default", Hosts: []string{"esx-1-01", "esx-1-02"}, Scope: []string{"esx-1-01", "esx-1-02"}})
	for _, n := range []string{"a", "b", "c", "d"} {
		put(events.BucketPods, events.PodRecordKey("default", n), &events.PodRecord{
			UID: "uid-" + n, Namespace: "default", Name: n, Host: "esx-1-01", Phase: events.PodPhaseRunning, VMRef: "vm-" + n,
			Networks: []string{"default"}, Datastores: []string{"shared-ds"},
			Size: events.PodVMSize{CPUMilli: 500, MemoryBytes: 4 << 30, MemoryMiB: 4096},
		})
	}
	out, errOut, code := runTool(t, url, "rebalance", "--dry-run")
	if code != 0 || strings.Count(out, "plan: ") != 2 || !strings.Contains(out, "esx-1-01 (100%) → esx-1-02 (0%)") {
		t.Fatalf("rebalance --dry-run: %d\n%s%s", code, out, errOut)
	}
	answer(t, b, events.SubjectMigrationRequested, func(p any) []events.Payload {
		r := p.(*events.MigrationRequested)
		if r.TargetHost != "esx-1-02" {
			t.Errorf("move of %s to %q, want esx-1-02", r.Pod, r.TargetHost)
		}
		return []events.Payload{&events.MigrationCompleted{MigrationRef: events.MigrationRef{ID: r.ID, Namespace: r.Namespace, Pod: r.Pod}, MigrationMove: events.MigrationMove{UID: "uid-" + r.Pod,
			SourceHost: "esx-1-01", TargetHost: r.TargetHost, TargetCluster: "cluster-1"}}}
	})
	out, errOut, code = runTool(t, url, "rebalance", "--wait", "10s")
	if code != 0 || strings.Count(out, "moved default/") != 2 {
		t.Fatalf("rebalance: %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code := runTool(t, url, "rebalance", "--threshold", "2"); code != 2 || !strings.Contains(errOut, "--threshold") {
		t.Errorf("bad threshold: %d %s", code, errOut)
	}
}
