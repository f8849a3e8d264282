package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
)

// The snapshot entry points as a user runs them: export → delete → apply -f
// re-creates the network; restore of version N re-applies it; the switch's
// realized configuration goes to a file and back onto a new switch.
func TestNetworkExportDeleteApplyAndRestore(t *testing.T) {
	_, dir := upForTest(t, "netconfig")
	v1 := "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: web}\nspec: {vlan: 120, cidr: 10.30.0.0/24, gateway: 10.30.0.1}\n"
	v2 := strings.Replace(v1, "vlan: 120", "vlan: 121", 1)
	mustRun(t, dir, v1, "apply", "-f", "-")
	eventually(t, "web version 1 ready", func() bool { return networkState(t, dir, "web") == "1 120 Ready" })
	// The same declaration again makes no version: apply says so.
	if out := mustRun(t, dir, v1, "apply", "-f", "-"); strings.TrimSpace(out) != "network/web unchanged" {
		t.Errorf("apply of the same network again printed %q, want unchanged", out)
	}
	// A change is followed until network-config has applied it.
	if out := mustRun(t, dir, v2, "apply", "-f", "-"); out != "network/web requested\nnetwork/web accepted: version 2 ready\n" {
		t.Errorf("apply of a changed network printed %q, want requested, then version 2 accepted", out)
	}
	if got := networkState(t, dir, "web"); got != "2 121 Ready" {
		t.Errorf("after apply: %s, want version 2 with vlan 121, ready", got)
	}
	// A declaration network-config cannot take here is rejected with its
	// reason: exit 1.
	clash := "apiVersion: podvisor.io/v1alpha1\nkind: Network\nmetadata: {name: clash}\nspec: {vlan: 130, cidr: 10.30.0.0/25, gateway: 10.30.0.1}\n"
	if out, errOut, code := run(t, dir, clash, "apply", "-f", "-"); code != 1 ||
		!strings.Contains(out, "network/clash rejected: InvalidSpec: spec.cidr: 10.30.0.0/25 overlaps 10.30.0.0/24 of network web") {
		t.Errorf("apply of an overlapping network: exit %d, %q, %q; want exit 1, rejected with InvalidSpec", code, out, errOut)
	}

	exported := mustRun(t, dir, "", "network", "export", "web")
	var n events.Network
	if err := yaml.UnmarshalStrict([]byte(exported), &n); err != nil || n.Kind != events.KindNetwork || n.Spec.VLAN != 121 ||
		n.Metadata.Annotations["podvisor.io/exported-version"] != "2" {
		t.Fatalf("export: %v\n%s", err, exported)
	}
	if old := mustRun(t, dir, "", "network", "export", "web", "--version", "1"); !strings.Contains(old, "vlan: 120") {
		t.Fatalf("export --version 1:\n%s", old)
	}
	if _, errOut, code := run(t, dir, "", "network", "export", "nosuch"); code != 1 || !strings.Contains(errOut, "nosuch") {
		t.Fatalf("export of an unknown network: exit %d, %q", code, errOut)
	}

	mustRun(t, dir, "", "delete", "network", "web")
	if out, _, _ := run(t, dir, "", "get", "networks"); strings.Contains(out, "\nweb ") {
		t.Fatalf("web still listed after delete:\n%s", out)
	}
	mustRun(t, dir, exported, "apply", "-f", "-")
	eventually(t, "web re-created from the file", func() bool { return networkState(t, dir, "web") == "1 121 Ready" })

	// Restore: the re-created network's history holds version 1 (vlan 121);
	// declare another, then restore version 1.
	mustRun(t, dir, v1, "apply", "-f", "-")
	eventually(t, "web version 2 (vlan 120)", func() bool { return networkState(t, dir, "web") == "2 120 Ready" })
	out := mustRun(t, dir, "", "network", "restore", "web", "--version", "1")
	if !strings.Contains(out, "version 3 (restored from version 1) ready") {
		t.Fatalf("restore printed %q", out)
	}
	if got := networkState(t, dir, "web"); got != "3 121 Ready" {
		t.Fatalf("after restore: %s, want version 3 with vlan 121", got)
	}
	if _, errOut, code := run(t, dir, "", "network", "restore", "web", "--version", "9"); code != 1 || !strings.Contains(errOut, "no version 9") {
		t.Fatalf("restore of a missing version: exit %d, %q", code, errOut)
	}
	if _, _, code := run(t, dir, "", "network", "restore", "web"); code != 2 {
		t.Fatalf("restore without --version: exit %d, want 2", code)
	}

	// The realized switch configuration, read back from vCenter.
	file := filepath.Join(t.TempDir(), "dvs.yaml")
	mustRun(t, dir, "", "network", "switch", "export", "pv-dvs", "-o", file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var cfg fabric.SwitchConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		t.Fatal(err)
	}
	var web *fabric.PortGroupConfig
	for i := range cfg.PortGroups {
		if cfg.PortGroups[i].Name == "pv-web" {
			web = &cfg.PortGroups[i]
		}
	}
	if web == nil || web.VLAN != 121 || len(cfg.Hosts) != 2 {
		t.Fatalf("exported switch:\n%s", data)
	}
	// Onto a new switch: the port groups move there (names are unique per
	// datacenter), and the file's hosts join.
	out = mustRun(t, dir, "", "network", "switch", "import", "-f", file, "--switch", "pv-dvs-copy", "--join-hosts")
	if !strings.Contains(out, "switch pv-dvs-copy created") || !strings.Contains(out, "2 hosts joined") {
		t.Fatalf("import printed %q", out)
	}
	copied := mustRun(t, dir, "", "network", "switch", "export", "pv-dvs-copy")
	if !strings.Contains(copied, "name: pv-web") || !strings.Contains(copied, "vlan: 121") {
		t.Fatalf("new switch reads back as:\n%s", copied)
	}
	if _, errOut, code := run(t, dir, "kind: Nope\n", "network", "switch", "import", "-f", "-"); code != 2 || !strings.Contains(errOut, "kind") {
		t.Fatalf("import of a bad file: exit %d, %q", code, errOut)
	}
}

// networkState is "version vlan status" of a network record.
func networkState(t *testing.T, dir, name string) string {
	t.Helper()
	out, _, code := run(t, dir, "", "get", "network", name, "-o", "json")
	if code != 0 {
		return ""
	}
	var r events.NetworkRecord
	if err := yaml.Unmarshal([]byte(out), &r); err != nil {
		return ""
	}
	return fmt.Sprintf("%d %d %s", r.Version, r.Spec.VLAN, r.Status)
}

// What apply and restore make of a network's record, for the request whose
// event is "req" published after the record read at t0.
func TestNetworkAnswerOf(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	version := func(v int64, status, event string) events.NetworkVersion {
		return events.NetworkVersion{Version: v, Status: status, Event: event}
	}
	for _, tt := range []struct {
		name     string
		rec      *events.NetworkRecord
		wantDone bool
		want     networkAnswer
	}{
		{name: "no record yet", rec: nil},
		{name: "new version still pending", rec: &events.NetworkRecord{Version: 2, Status: events.NetworkStatusPending,
			History: []events.NetworkVersion{version(1, events.NetworkVersionApplied, "a"), version(2, events.NetworkVersionPending, "req")}}},
		{name: "new version ready", wantDone: true, want: networkAnswer{version: 2, status: events.NetworkStatusReady},
			rec: &events.NetworkRecord{Version: 2, Status: events.NetworkStatusReady, History: []events.NetworkVersion{version(2, events.NetworkVersionApplied, "req")}}},
		{name: "new version degraded, with why", wantDone: true,
			want: networkAnswer{version: 2, status: events.NetworkStatusDegraded, reason: "HostsFailed", message: "1 of 2 hosts"},
			rec: &events.NetworkRecord{Version: 2, Status: events.NetworkStatusDegraded, Reason: "HostsFailed", Message: "1 of 2 hosts",
				History: []events.NetworkVersion{version(2, events.NetworkVersionApplied, "req")}}},
		{name: "new version rolled back", wantDone: true,
			want: networkAnswer{version: 2, refused: true, rolledBack: true, reason: "ConnectivityLost", message: "cut esx-1-01 off"},
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusRolledBack, History: []events.NetworkVersion{version(1, events.NetworkVersionApplied, "a"),
				{Version: 2, Status: events.NetworkVersionRolledBack, Event: "req", Reason: "ConnectivityLost", Message: "cut esx-1-01 off"}}}},
		{name: "new version superseded", wantDone: true, want: networkAnswer{version: 2, supersededBy: 3},
			rec: &events.NetworkRecord{Version: 3, Status: events.NetworkStatusPending,
				History: []events.NetworkVersion{version(2, events.NetworkVersionPending, "req"), version(3, events.NetworkVersionPending, "b")}}},
		{name: "refused after the publish", wantDone: true, want: networkAnswer{refused: true, reason: "InUse", message: "held"},
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusReady, Reason: "InUse", Message: "held", UpdatedAt: t0.Add(time.Millisecond)}},
		{name: "new network refused", wantDone: true, want: networkAnswer{refused: true, reason: "InvalidSpec", message: "overlaps"},
			rec: &events.NetworkRecord{Status: events.NetworkStatusRejected, Reason: "InvalidSpec", Message: "overlaps", UpdatedAt: t0.Add(time.Millisecond)}},
		{name: "an earlier refusal is not this request's",
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusReady, Reason: "InUse", Message: "held", UpdatedAt: t0}},
		{name: "a restore refused after the publish", wantDone: true, want: networkAnswer{refused: true, reason: "RestoreFailed", message: "gone"},
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusReady, Reason: "RestoreFailed", Message: "gone", UpdatedAt: t0.Add(time.Second)}},
		{name: "refused, naming this request, whenever written", wantDone: true, want: networkAnswer{refused: true, reason: "InUse", message: "held"},
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusReady, Reason: "InUse", Message: "held", RefusedEvent: "req", UpdatedAt: t0}},
		{name: "a refusal naming another request is not this one's, even when rewritten later",
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusReady, Reason: "InUse", Message: "held", RefusedEvent: "earlier", UpdatedAt: t0.Add(time.Second)}},
		{name: "another reason is no refusal",
			rec: &events.NetworkRecord{Version: 1, Status: events.NetworkStatusDegraded, Reason: "HostsFailed", UpdatedAt: t0.Add(time.Second)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, done := networkAnswerOf(tt.rec, "req", t0)
			if done != tt.wantDone || done && got != tt.want {
				t.Errorf("networkAnswerOf = %+v, %v; want %+v, %v", got, done, tt.want, tt.wantDone)
			}
		})
	}
}
