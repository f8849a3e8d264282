package provisioner

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/deps"
	"github.com/podvisor/podvisor/shared/testenv"
	corev1 "k8s.io/api/core/v1"
)

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	// Templates of pod VMs that boot the image and talk on network serial
	// ports: what a vCenter runs.
	vcenter := DefaultConfig()
	vcenter.BootDisk, vcenter.ChannelURI, vcenter.ChannelKeyFile = "[ds] podvisor/boot-0123456789ab/podvm.vmdk", "tcp://c.example:7041", "/k"
	vcenter.TemplatesWarm = 1
	if err := vcenter.Validate(); err != nil {
		t.Fatalf("templates with a boot disk and serial channels: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"workers", func(c *Config) { c.Workers = 0 }, "Workers 0"},
		{"pod workers", func(c *Config) { c.PodWorkers = 0 }, "PodWorkers 0"},
		{"attempts vs backoff", func(c *Config) { c.MaxAttempts = 2 }, "BackOff: 5 entries"},
		{"negative resync", func(c *Config) { c.ResyncInterval = -time.Second }, "ResyncInterval"},
		{"folder", func(c *Config) { c.FolderRoot = "/" }, "FolderRoot: required"},
		{"shards", func(c *Config) { c.FolderShards = -1 }, "FolderShards -1"},
		{"datastore brackets", func(c *Config) { c.Datastore = "[ds]" }, "Datastore \"[ds]\""},
		{"negative stop slack", func(c *Config) { c.GuestStopSlack = -time.Second }, "GuestStopSlack"},
		{"boot disk not a datastore path", func(c *Config) { c.BootDisk = "podvm.vmdk" }, "BootDisk: \"podvm.vmdk\" is not a datastore path"},
		{"boot disk not a descriptor", func(c *Config) { c.BootDisk = "[ds] podvisor/boot-0123456789ab/" }, "BootDisk: \"[ds] podvisor/boot-0123456789ab/\" does not name a disk descriptor (.vmdk)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want it to name %q", err, tt.want)
			}
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv(EnvResyncInterval, "15s")
	t.Setenv(EnvFolderShards, "4")
	t.Setenv(EnvFolderRoot, "pods")
	t.Setenv(EnvPodWorkers, "16")
	c, err := ConfigFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.ResyncInterval != 15*time.Second || c.FolderShards != 4 || c.FolderRoot != "pods" || !c.AwaitGuestStop || c.PodWorkers != 16 {
		t.Errorf("config = %+v", c)
	}
	t.Setenv(EnvAwaitGuestStop, "false")
	t.Setenv(EnvGuestStopSlack, "2s")
	if c, err = ConfigFromEnv(); err != nil || c.AwaitGuestStop || c.GuestStopSlack != 2*time.Second {
		t.Errorf("%s=false %s=2s: await %v slack %s err %v", EnvAwaitGuestStop, EnvGuestStopSlack, c.AwaitGuestStop, c.GuestStopSlack, err)
	}
	t.Setenv(EnvAwaitGuestStop, "maybe")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), EnvAwaitGuestStop) {
		t.Errorf("bad %s accepted: %v", EnvAwaitGuestStop, err)
	}
	t.Setenv(EnvAwaitGuestStop, "")
	t.Setenv(EnvBootDisk, "[shared-ds] podvisor/boot-0123456789ab/podvm.vmdk")
	if c, err = ConfigFromEnv(); err != nil || c.BootDisk != "[shared-ds] podvisor/boot-0123456789ab/podvm.vmdk" {
		t.Errorf("%s: boot disk %q, err %v", EnvBootDisk, c.BootDisk, err)
	}
	t.Setenv(EnvBootDisk, "/var/lib/podvm.vmdk")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "/var/lib/podvm.vmdk") {
		t.Errorf("bad %s accepted: %v", EnvBootDisk, err)
	}
	t.Setenv(EnvBootDisk, "")
	t.Setenv(EnvWorkers, "many")
	if _, err := ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), EnvWorkers) {
		t.Errorf("bad %s accepted: %v", EnvWorkers, err)
	}
}

// The pods' stream, whose handlers wait on KV round trips and vSphere
// tasks, gets its own (larger) worker count; the other streams keep Workers.
func TestPodEventsHaveTheirOwnWorkers(t *testing.T) {
	s := &Service{cfg: DefaultConfig()}
	s.cfg.Workers, s.cfg.PodWorkers = 3, 48
	testenv.CheckWorkers(t, s.routes().Consumers(bus.ConsumerConfig{Workers: s.cfg.Workers}, s.tuneConsumer), 3,
		map[string]int{events.StreamPods: 48})
}

func TestVMFolderSharding(t *testing.T) {
	c := DefaultConfig()
	if got := c.vmFolder("team-a", "u1"); got != "podvisor/team-a" {
		t.Errorf("unsharded folder %s", got)
	}
	c.FolderShards = 8
	seen := map[string]bool{}
	for i := range 64 {
		f := c.vmFolder("team-a", "uid-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		if !strings.HasPrefix(f, "podvisor/team-a/shard-") {
			t.Fatalf("sharded folder %s", f)
		}
		seen[f] = true
	}
	if len(seen) < 4 {
		t.Errorf("64 uids landed in %d shards of 8; the hash does not spread", len(seen))
	}
	if c.vmFolder("team-a", "same") != c.vmFolder("team-a", "same") {
		t.Error("shard of a uid is not stable")
	}
}

func TestPodUID(t *testing.T) {
	req := &events.PodRequested{Pod: corev1.Pod{}}
	req.Pod.Name = "web"
	a, b := podUID(req, "ce-1"), podUID(req, "ce-1")
	if a != b {
		t.Errorf("same request id gave %s and %s", a, b)
	}
	if podUID(req, "ce-2") == a {
		t.Error("another request id gave the same uid")
	}
	// A client's uid never becomes the pod's (validation refuses it
	// before admission; the derivation does not read it either).
	req.UID = "explicit"
	req.Pod.UID = "from-manifest"
	if got := podUID(req, "ce-1"); got != a {
		t.Errorf("a client's uid changed the derived uid: %s, want %s", got, a)
	}
	if vmName("u", 0) != "pv-u" || vmName("u", 2) != "pv-u-2" {
		t.Errorf("vm names %s %s", vmName("u", 0), vmName("u", 2))
	}
}

func TestSpecHashIgnoresUID(t *testing.T) {
	p := testPod("h")
	h1, _ := specHash(p)
	p.UID = "x"
	h2, _ := specHash(p)
	p.Spec.Containers[0].Image = "other:1"
	h3, _ := specHash(p)
	if h1 != h2 || h1 == h3 {
		t.Errorf("hashes: plain %s, with uid %s, other image %s", h1, h2, h3)
	}
}

func TestNewChecksDependencies(t *testing.T) {
	if _, err := New(DefaultConfig(), Deps{}); !errors.Is(err, deps.ErrMissing) || !strings.Contains(err.Error(), "Deps.VSphere") || !strings.Contains(err.Error(), "Deps.Bus") {
		t.Errorf("New without vSphere and bus = %v, want both named as required", err)
	}
	e := newEnv(t)
	if _, err := New(DefaultConfig(), Deps{VSphere: e.sess}); !errors.Is(err, deps.ErrMissing) || !strings.Contains(err.Error(), "Deps.Bus") || strings.Contains(err.Error(), "Deps.VSphere") {
		t.Errorf("New without bus = %v, want Deps.Bus (only) required", err)
	}
	bad := DefaultConfig()
	bad.Workers = 0
	if _, err := New(bad, Deps{Bus: e.Bus, VSphere: e.sess}); err == nil || !strings.Contains(err.Error(), "Workers") {
		t.Errorf("New with bad config = %v, want an error naming Workers", err)
	}
	if svc, err := New(DefaultConfig(), Deps{Bus: e.Bus, VSphere: e.sess}); err != nil || svc == nil {
		t.Errorf("New = %v, %v", svc, err)
	}
}

// Templates are keyed by the agent build: the one named, else, for pod VMs
// that boot the image, the image's path (it names the image's digest), so
// that a new boot image replaces the templates booted from the old.
func TestTemplateAgentDefaultsToTheBootImage(t *testing.T) {
	const disk = "[ds1] podvisor/boot-0123456789ab/podvm.vmdk"
	for _, tc := range []struct {
		agent, boot, want string
	}{
		{"sha256:agent", disk, "sha256:agent"},
		{"", disk, disk},
		{"", "", ""},
	} {
		if got := (Config{TemplateAgent: tc.agent, BootDisk: tc.boot}).templateAgent(); got != tc.want {
			t.Errorf("TemplateAgent %q, BootDisk %q: templates keyed by %q, want %q", tc.agent, tc.boot, got, tc.want)
		}
	}
}
