package runner

import (
	"slices"
	"strings"
	"testing"
)

// `up --services` never selects the dashboard: up serves its own status
// page; `serve dashboard` finds it.
func TestDashboardIsServedNotSelected(t *testing.T) {
	all, err := Select("all")
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(all, func(s Spec) bool { return s.Name == "dashboard" }) {
		t.Error("--services=all selects the dashboard")
	}
	if _, err := Select("scheduler,dashboard"); err == nil || !strings.Contains(err.Error(), "status page") {
		t.Errorf("--services=scheduler,dashboard: %v, want a refusal that names up's status page", err)
	}
	if _, err := Lookup("dashboard"); err != nil {
		t.Errorf("serve dashboard: %v", err)
	}
}
