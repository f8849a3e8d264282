package netconfig

import (
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/testenv"
)

func TestConfigValidateNamesEveryBadField(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c.PushParallelism = 0
	c.ProbeInterval = 0
	c.HistoryLimit = 1
	c.AckWait = time.Millisecond
	c.AllHostsSwitch = ""
	c.SwitchMTU = 100
	c.AttachWorkers = 0
	testenv.CheckErrorMentions(t, c.Validate(), "PushParallelism", "ProbeInterval", "HistoryLimit", "AckWait", "AllHostsSwitch", "SwitchMTU", "AttachWorkers")
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("PODVISOR_NETCONFIG_PUSH_PARALLELISM", "32")
	t.Setenv("PODVISOR_NETCONFIG_PROBE_WINDOW", "2s")
	t.Setenv("PODVISOR_NETCONFIG_SWITCH", "site-dvs")
	t.Setenv("PODVISOR_NETCONFIG_ATTACH_WORKERS", "16")
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.PushParallelism != 32 || c.ProbeWindow != 2*time.Second || c.AllHostsSwitch != "site-dvs" || c.AttachWorkers != 16 {
		t.Fatalf("ConfigFromEnv = %+v", c)
	}
	t.Setenv("PODVISOR_NETCONFIG_PROBE_WINDOW", "soon")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "PODVISOR_NETCONFIG_PROBE_WINDOW") {
		t.Fatalf("bad duration: %v, want an error naming the variable", err)
	}
}

// The pods' stream, where attaches wait on KV round trips, gets its own
// (larger) worker count; the other streams keep Workers.
func TestAttachesHaveTheirOwnWorkers(t *testing.T) {
	s := &Service{cfg: DefaultConfig()}
	s.cfg.Workers, s.cfg.AttachWorkers = 3, 48
	testenv.CheckWorkers(t, s.routes().Consumers(bus.ConsumerConfig{Workers: s.cfg.Workers}, s.tuneConsumer), 3,
		map[string]int{events.StreamPods: 48})
}
