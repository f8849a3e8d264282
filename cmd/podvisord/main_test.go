package main

import (
	"context"
	"testing"
)

// Exit statuses: a service podvisord does not know, or a bad invocation,
// is a usage error (2); version prints and succeeds. That it serves every
// service is shown end to end: `podvisor bench --services-apart` runs each
// as a podvisord process (e2e TestBenchMeasuresTheControlPlaneApart).
func TestExitStatuses(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"serve", "no-such-service", "--state-dir", t.TempDir()}, 2},
		{[]string{"serve"}, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"serve", "scheduler", "--no-such-flag"}, 2},
		{[]string{"version"}, 0},
	} {
		if got := run(context.Background(), tc.args); got != tc.want {
			t.Errorf("podvisord %q: exit %d, want %d", tc.args, got, tc.want)
		}
	}
}
