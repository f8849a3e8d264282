package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
)

// describe network lists each host in scope as columns — version, state,
// when — like the rest of describe, not as the stored JSON.
func TestDescribeNetworkHostsAsColumns(t *testing.T) {
	_, dir := upForTest(t, "netconfig")
	waitDefaultNetworkReady(t, dir)
	out := mustRun(t, dir, "", "describe", "network", "default")
	_, hosts, ok := strings.Cut(out, "Hosts:\n")
	if !ok {
		t.Fatalf("describe network default:\n%s\nwant a Hosts section", out)
	}
	rows := 0
	for _, line := range strings.Split(hosts, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  ") {
			break // the section ends where the events begin
		}
		if len(f) != 6 || f[1] != "version" || f[2] != "1" || f[3] != events.NetworkHostStateReady || f[4] != "updated" || !isTime(f[5]) {
			t.Fatalf("host row %q, want HOST version 1 Ready updated TIME", line)
		}
		rows++
	}
	if want := fmt.Sprintf("%d of %d in scope", rows, rows); rows == 0 || !strings.Contains(out, want) {
		t.Fatalf("describe network default lists %d hosts, want every host in scope, ready:\n%s", rows, out)
	}
}

func isTime(s string) bool {
	_, err := time.Parse(time.RFC3339, s)
	return err == nil
}

func TestNetworkHostCells(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		h    events.NetworkHostRecord
		want string
	}{
		{"ready", events.NetworkHostRecord{Host: "esx-1-01", NetworkHostState: events.NetworkHostState{Version: 1, State: "Ready", UpdatedAt: at}},
			"esx-1-01|version 1|Ready|updated 2025-03-01T12:00:00Z"},
		{"failed with its reason and message", events.NetworkHostRecord{Host: "esx-1-02", NetworkHostState: events.NetworkHostState{
			Version: 2, State: "Failed", Reason: "HostDisconnected", Message: "host not responding\nsince boot", UpdatedAt: at}},
			`esx-1-02|version 2|Failed (HostDisconnected)|updated 2025-03-01T12:00:00Z|host not responding\nsince boot`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(networkHostCells(tt.h), "|"); got != tt.want {
				t.Errorf("cells %q, want %q", got, tt.want)
			}
		})
	}
}
