package scheduler

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// The sweep's view of a pod record reads the same fields as the record
// itself: a tag renamed on one side and not the other would make every
// pod look gone (no uid) or never placed (no phase) to the sweep.
func TestPodViewReadsThePodRecordsFields(t *testing.T) {
	rec := events.PodRecord{
		UID: "u1", Namespace: "ns", Name: "web", Phase: events.PodPhaseRunning, Reason: "Unschedulable",
		Host: "host-3", DeletionRequestedAt: time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC),
	}
	data, err := json.Marshal(&rec)
	if err != nil {
		t.Fatal(err)
	}
	var v podView
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	want := podView{UID: rec.UID, Namespace: rec.Namespace, Name: rec.Name, Phase: rec.Phase, Reason: rec.Reason,
		Host: rec.Host, DeletionRequestedAt: rec.DeletionRequestedAt}
	if v != want {
		t.Errorf("view of the record = %+v, want %+v", v, want)
	}
	if v.key() != rec.Key() {
		t.Errorf("view key %q, record key %q", v.key(), rec.Key())
	}
}
