package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bustest"
)

// TestGetMigrationsSkipsTheLeaderLease: the migration service keeps its
// leader lease in the migrations bucket; it is no migration to list or
// cancel.
func TestGetMigrationsSkipsTheLeaderLease(t *testing.T) {
	b := bustest.Start(t)
	url := b.Conn().ConnectedUrl()
	kv, err := b.KV(context.Background(), events.BucketMigrations)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := json.Marshal(map[string]any{"holder": "migration-0-1-abcd", "expires": time.Now().Add(time.Hour)})
	if _, err := kv.Put(context.Background(), events.MigrationLeaderKey, lease); err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(events.MigrationRecord{ID: "m1", Namespace: "default", Pod: "web", Phase: events.MigrationPhasePending, CreatedAt: time.Now()})
	if _, err := kv.Put(context.Background(), "m1", rec); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runTool(t, url, "get", "migrations", "-A")
	if code != 0 {
		t.Fatalf("get migrations -A: %d %s", code, errOut)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 || !strings.Contains(lines[1], "web") {
		t.Fatalf("get migrations -A printed, want the header and m1 only:\n%s", out)
	}
	if _, errOut, code := runTool(t, url, "migrate", "cancel", events.MigrationLeaderKey); code != 1 || !strings.Contains(errOut, "not found") {
		t.Fatalf("cancel of the lease key: %d %s, want not found", code, errOut)
	}
}
