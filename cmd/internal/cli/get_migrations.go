package cli

import (
	"fmt"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"migrations", "migration", "mig"},
		kind:       "Migration",
		bucket:     events.BucketMigrations,
		namespaced: true,
		header:     []string{"POD", "FROM", "TO", "PHASE", "AGE", "REASON"},
		wideHeader: []string{"ID", "TARGET CLUSTER"},
		wide: func(r record) []string {
			m := &r.(*migrationRow).MigrationRecord
			return []string{m.ID, dash(m.TargetCluster)}
		},
		decode: decodeRow[migrationRow],
		// The bucket also holds the service's leader lease.
		skip: func(key string) bool { return key == events.MigrationLeaderKey },
	})
}

// migrationRow is one migration; its name is the migration ID, so that
// `get migration <id>` finds it and `-o json` shows the whole record.
type migrationRow struct{ events.MigrationRecord }

func (m *migrationRow) Namespace() string { return m.MigrationRecord.Namespace }
func (m *migrationRow) Name() string      { return m.ID }
func (m *migrationRow) Object() any       { return m.MigrationRecord }

func (m *migrationRow) Row(now time.Time) []string {
	r := &m.MigrationRecord
	to := r.TargetHost
	if to == "" && r.RequestedTarget != "" {
		to = r.RequestedTarget + "?"
	}
	what := r.Pod
	if r.IsVM() {
		what = "vm/" + r.Pod // a native VM's move shares the queue
	}
	return []string{what, dash(r.SourceHost), dash(to), migrationPhase(r), age(r.CreatedAt, now), dash(migrationReason(r))}
}

// migrationPhase adds what a person wants to know next to the phase: the
// queue position while queued, the percentage while relocating.
func migrationPhase(r *events.MigrationRecord) string {
	switch r.Phase {
	case events.PhaseQueued:
		return fmt.Sprintf("Queued(#%d)", r.QueuePosition+1)
	case events.PhaseRelocating:
		return fmt.Sprintf("Relocating(%d%%)", r.Percent)
	}
	return dash(r.Phase)
}

// migrationReason is the refusal or failure, with its message; for a
// migration in flight, what it waits for.
func migrationReason(r *events.MigrationRecord) string {
	switch {
	case r.Reason != "" && r.Message != "":
		return r.Reason + ": " + r.Message
	case r.Reason != "":
		return r.Reason
	case r.Active():
		return r.Message
	}
	return ""
}
