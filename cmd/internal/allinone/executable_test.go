package allinone

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// The service processes run podvisord beside up's executable only when it
// is of the same build: one left from another build would run other service
// code. A build that does not say its commit is taken on trust.
func TestServiceExecutableIsOfTheSameBuild(t *testing.T) {
	script := func(dir, name, line string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+line+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const this = "podvisor 0.3.0 (commit 0123abc, built 2026-12-04T20:00:00Z, go1.26.0, linux/amd64)"
	for _, tc := range []struct {
		name, podvisord string
		wantDaemon      bool
	}{
		{"same build", "podvisor 0.3.0 (commit 0123abc, built 2026-12-04T20:00:00Z, go1.26.0, linux/amd64)", true},
		{"another commit", "podvisor 0.3.0 (commit 9999fff, built 2026-12-01T08:00:00Z, go1.26.0, linux/amd64)", false},
		{"another version", "podvisor 0.2.9 (commit 0123abc, built 2026-12-04T20:00:00Z, go1.26.0, linux/amd64)", false},
		{"commit unknown", "podvisor dev (commit unknown, built unknown, go1.26.0, linux/amd64)", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			self := script(dir, "podvisor", this)
			daemon := script(dir, "podvisord", tc.podvisord)
			s := &System{cfg: Config{Executable: self}, log: slog.New(slog.DiscardHandler)}
			got, err := s.serviceExecutable()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{true: daemon, false: self}[tc.wantDaemon]; got != want {
				t.Errorf("service executable %s, want %s", got, want)
			}
		})
	}
}
