package runner

import (
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/services/hostagent"
	"github.com/podvisor/podvisor/shared/config"
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

// A host agent process serving every host needs the concentrator (where
// every host's channels arrive); listed hosts do not.
func TestHostAgentSettingsAreChecked(t *testing.T) {
	spec, err := Lookup("hostagent")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		settings map[string]string
		want     string // "" for valid
	}{
		{"listed hosts", map[string]string{hostagent.EnvHost: "esx-1,esx-2", hostagent.EnvChannelDir: "/run/pv"}, ""},
		{"every host with a concentrator", map[string]string{hostagent.EnvHost: "*", hostagent.EnvChannelDir: "/run/pv",
			hostagent.EnvConcentrator: "tcp://0.0.0.0:7041", hostagent.EnvChannelKeyFile: "/k"}, ""},
		{"every host without one", map[string]string{hostagent.EnvHost: "*", hostagent.EnvChannelDir: "/run/pv"}, hostagent.EnvConcentrator},
		{"every host, no channel dir", map[string]string{hostagent.EnvHost: "*",
			hostagent.EnvConcentrator: "tcp://0.0.0.0:7041", hostagent.EnvChannelKeyFile: "/k"}, hostagent.EnvChannelDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := spec.Check(config.Map(tc.settings))
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}

// A value that parses but that a service refuses is reported with the
// variable that set it: whoever reads the error set a variable, not a Go
// field.
func TestARefusedValueNamesItsVariable(t *testing.T) {
	for _, tc := range []struct{ service, variable, value string }{
		{"scheduler", "PODVISOR_SCHEDULER_BATCH_SIZE", "0"},
		{"netconfig", "PODVISOR_NETCONFIG_PUSH_PARALLELISM", "0"},
		{"migration", "PODVISOR_MIGRATION_MAX_PER_CLUSTER", "-1"},
		{"imagecache", "PODVISOR_IMAGECACHE_WORKERS", "-1"},
	} {
		t.Run(tc.service, func(t *testing.T) {
			spec, err := Lookup(tc.service)
			if err != nil {
				t.Fatal(err)
			}
			err = spec.Check(config.Map(map[string]string{tc.variable: tc.value}))
			if err == nil || !strings.Contains(err.Error(), "("+tc.variable+"): must") {
				t.Errorf("%s=%s: Check = %v, want the variable named", tc.variable, tc.value, err)
			}
		})
	}
}
