package netconfig_test

import (
	"context"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/services/netconfig"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func TestNewChecksDepsAndAcceptsASession(t *testing.T) {
	bad := netconfig.DefaultConfig()
	bad.PushParallelism = 0
	_, err := netconfig.New(bad, netconfig.Deps{})
	for _, want := range []string{"Deps.Bus", "Deps.VSphere", "PushParallelism"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New with nothing: %v, want an error naming %s", err, want)
		}
	}

	ctx := context.Background()
	d := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	s, err := vsphere.Connect(ctx, vsphere.Config{URL: d.URL().String(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	svc, err := netconfig.New(netconfig.DefaultConfig(), netconfig.Deps{Bus: bustest.Start(t), VSphere: s})
	if err != nil || svc == nil {
		t.Fatalf("New with a session: %v", err)
	}
}
