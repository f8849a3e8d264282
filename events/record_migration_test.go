package events

import "testing"

func TestMigrationRecordSample(t *testing.T) {
	var r MigrationRecord
	decodeRecordSample(t, "testdata/records/migration.json", &r)
	if got := r.Key(); got != "default/web" {
		t.Errorf("Key = %q, want default/web", got)
	}
	if got := MigrationRecordKey(r.ID); got != r.ID {
		t.Errorf("MigrationRecordKey = %q, want the ID", got)
	}
	if !r.Active() || r.Started() {
		t.Errorf("a Queued migration: Active = %v (want true), Started = %v (want false)", r.Active(), r.Started())
	}
}

func TestMigrationPhases(t *testing.T) {
	tests := []struct {
		phase          string
		final, started bool
	}{
		{MigrationPhasePending, false, false},
		{PhaseQueued, false, false},
		{PhasePrechecking, false, false},
		{PhaseRelocating, false, true},
		{PhaseFinalizing, false, true},
		{MigrationPhaseCompleted, true, true},
		{MigrationPhaseFailed, true, false},
		{MigrationPhaseRejected, true, false},
		{MigrationPhaseCancelled, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.phase, func(t *testing.T) {
			r := MigrationRecord{Phase: tt.phase}
			if got := MigrationPhaseFinal(tt.phase); got != tt.final {
				t.Errorf("MigrationPhaseFinal = %v, want %v", got, tt.final)
			}
			if got := r.Active(); got == tt.final {
				t.Errorf("Active = %v, want %v", got, !tt.final)
			}
			if got := r.Started(); got != tt.started {
				t.Errorf("Started = %v, want %v", got, tt.started)
			}
		})
	}
}

func TestDrainRecordSample(t *testing.T) {
	var r DrainRecord
	decodeRecordSample(t, "testdata/records/drain.json", &r)
	if len(r.Unmovable) != 1 || r.Unmovable[0].Reason != "NoTarget" {
		t.Errorf("Unmovable = %+v", r.Unmovable)
	}
	if got := DrainRecordKey("esx-1-01"); got != "esx-1-01" {
		t.Errorf("DrainRecordKey = %q", got)
	}
	if got := DrainRecordKey("host 1"); got == "host 1" {
		t.Errorf("DrainRecordKey kept a space: %q", got)
	}
}
func TestMovedTextCountsPodsAndVMsApart(t *testing.T) {
	for _, tt := range []struct {
		pods, vms int
		want      string
	}{
		{0, 0, "no pods"},
		{1, 0, "1 pod"},
		{2, 0, "2 pods"},
		{0, 1, "1 VM"},
		{1, 1, "1 pod and 1 VM"},
		{3, 2, "3 pods and 2 VMs"},
	} {
		if got := MovedText(tt.pods, tt.vms); got != tt.want {
			t.Errorf("MovedText(%d, %d) = %q, want %q", tt.pods, tt.vms, got, tt.want)
		}
	}
}
