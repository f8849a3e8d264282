package allinone

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/mo"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// serveForTest runs serveSimControl for sys until the test ends.
func serveForTest(t *testing.T, sys *System) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sys.serveSimControl(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveSimControl: %v", err)
		}
	})
}

func request(t *testing.T, b *bus.Bus, subject string, req SimHostRequest) (SimHostReply, error) {
	t.Helper()
	data, _ := json.Marshal(req)
	var reply SimHostReply
	var out []byte
	var err error
	// The server subscribes in the background; ask until it answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = b.Request(ctx, subject, data)
		cancel()
		if err == nil || errors.Is(err, bus.ErrRemote) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return reply, err
	}
	return reply, json.Unmarshal(out, &reply)
}

func TestSimControlFailsAndRecoversHosts(t *testing.T) {
	b := bustest.Start(t)
	dc := simtest.Start(t, sim.Config{Clusters: 1, HostsPerCluster: 2, Seed: 1})
	sys := &System{Datacenter: dc, log: slog.New(slog.DiscardHandler)}
	sys.Endpoints.NATSURL = b.Conn().ConnectedUrl()
	serveForTest(t, sys)
	c := simtest.Client(t, dc)
	host := dc.Hosts()[1]
	state := func() (string, bool) {
		var h mo.HostSystem
		if err := c.RetrieveOne(context.Background(), host.Ref, []string{"runtime"}, &h); err != nil {
			t.Fatal(err)
		}
		return string(h.Runtime.ConnectionState), h.Runtime.InMaintenanceMode
	}

	reply, err := request(t, b, SubjectSimHostFail, SimHostRequest{Host: host.Name})
	if err != nil || reply.State != "notResponding" {
		t.Fatalf("fail: %+v %v", reply, err)
	}
	if s, _ := state(); s != "notResponding" {
		t.Errorf("vCenter says %s after fail", s)
	}
	if _, err := request(t, b, SubjectSimHostRecover, SimHostRequest{Host: host.Name}); err != nil {
		t.Fatal(err)
	}
	if s, _ := state(); s != "connected" {
		t.Errorf("vCenter says %s after recover", s)
	}
	if _, err := request(t, b, SubjectSimHostMaintenance, SimHostRequest{Host: host.Name, Maintenance: true}); err != nil {
		t.Fatal(err)
	}
	if _, m := state(); !m {
		t.Error("host not in maintenance mode")
	}
	_, err = request(t, b, SubjectSimHostFail, SimHostRequest{Host: "esx-9-99"})
	if !errors.Is(err, bus.ErrRemote) || !strings.Contains(err.Error(), `"esx-9-99" is not in the simulated datacenter`) {
		t.Errorf("unknown host: %v", err)
	}
	if _, err := request(t, b, SubjectSimHostFail, SimHostRequest{}); err == nil || !strings.Contains(err.Error(), `want JSON {"host"`) {
		t.Errorf("empty request: %v", err)
	}
}

func TestSimControlWithoutSimulator(t *testing.T) {
	b := bustest.Start(t)
	sys := &System{log: slog.New(slog.DiscardHandler)}
	sys.Endpoints.NATSURL = b.Conn().ConnectedUrl()
	serveForTest(t, sys)
	_, err := request(t, b, SubjectSimHostFail, SimHostRequest{Host: "esx-1-01"})
	if err == nil || !strings.Contains(err.Error(), "external vCenter") {
		t.Errorf("without a simulator: %v", err)
	}
}
