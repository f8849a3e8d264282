package netconfig

import (
	"strings"
	"testing"
	"time"
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
	err := c.Validate()
	if err == nil {
		t.Fatal("Validate accepted a broken config")
	}
	for _, field := range []string{"PushParallelism", "ProbeInterval", "HistoryLimit", "AckWait", "AllHostsSwitch", "SwitchMTU"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("PODVISOR_NETCONFIG_PUSH_PARALLELISM", "32")
	t.Setenv("PODVISOR_NETCONFIG_PROBE_WINDOW", "2s")
	t.Setenv("PODVISOR_NETCONFIG_SWITCH", "site-dvs")
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.PushParallelism != 32 || c.ProbeWindow != 2*time.Second || c.AllHostsSwitch != "site-dvs" {
		t.Fatalf("ConfigFromEnv = %+v", c)
	}
	t.Setenv("PODVISOR_NETCONFIG_PROBE_WINDOW", "soon")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "PODVISOR_NETCONFIG_PROBE_WINDOW") {
		t.Fatalf("bad duration: %v, want an error naming the variable", err)
	}
}
