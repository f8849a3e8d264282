package natsembed_test

import (
	"testing"

	"github.com/podvisor/podvisor/shared/bus/natsembed"
)

// A config without a store directory, or with a port or host that cannot
// be, is refused before any server starts.
func TestStartValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  natsembed.Config
	}{
		{"no dir", natsembed.Config{}},
		{"bad port", natsembed.Config{Dir: t.TempDir(), Port: 70000}},
		{"bad host", natsembed.Config{Dir: t.TempDir(), Host: "not a host"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := natsembed.Start(tt.cfg)
			if err == nil {
				srv.Shutdown()
				t.Fatal("natsembed.Start succeeded")
			}
		})
	}
}
