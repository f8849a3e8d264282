package bundle

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

func TestArgsFollowKubernetesRules(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		entry, cmd, cmnd, args []string
		want                   []string
		wantErr                bool
	}{
		{"image only", []string{"/ep"}, []string{"a"}, nil, nil, []string{"/ep", "a"}, false},
		{"args replace cmd", []string{"/ep"}, []string{"a"}, nil, []string{"b"}, []string{"/ep", "b"}, false},
		{"command replaces entrypoint and drops cmd", []string{"/ep"}, []string{"a"}, []string{"/c"}, nil, []string{"/c"}, false},
		{"command and args", []string{"/ep"}, []string{"a"}, []string{"/c"}, []string{"b"}, []string{"/c", "b"}, false},
		{"cmd without entrypoint", nil, []string{"/bin/sh"}, nil, nil, []string{"/bin/sh"}, false},
		{"nothing to run", nil, nil, nil, nil, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Args(&guestchannel.Container{Name: "c", Entrypoint: tc.entry, Cmd: tc.cmd, Command: tc.cmnd, Args: tc.args})
			if (err != nil) != tc.wantErr || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Args = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestSpec(t *testing.T) {
	rootfs := t.TempDir()
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte("root:x:0:0::/:/bin/sh\nweb:x:33:34::/:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc/group"), []byte("root:x:0:\nstaff:x:50:\n"), 0o644)
	uid := int64(1000)
	c := &guestchannel.Container{
		Name: "app", Cmd: []string{"/app"}, User: "web:staff", WorkingDir: "/srv",
		Env:          []guestchannel.EnvVar{{Name: "A", Value: "1"}},
		Resources:    guestchannel.Resources{CPURequestMilli: 250, CPULimitMilli: 500, MemoryLimitBytes: 64 << 20},
		VolumeMounts: []guestchannel.VolumeMount{{Name: "data", MountPath: "/data", ReadOnly: true}},
	}
	s, err := Spec(c, Params{Rootfs: rootfs, Hostname: "pod", CgroupsPath: "/vm/app", Volumes: map[string]string{"data": "/disk/volumes/data"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.Process.User.UID != 33 || s.Process.User.GID != 50 {
		t.Errorf("user = %+v, want web (33) in staff (50)", s.Process.User)
	}
	if s.Process.Cwd != "/srv" || s.Hostname != "pod" || s.Linux.CgroupsPath != "/vm/app" {
		t.Errorf("cwd %q hostname %q cgroup %q", s.Process.Cwd, s.Hostname, s.Linux.CgroupsPath)
	}
	env := strings.Join(s.Process.Env, " ")
	if !strings.Contains(env, "A=1") || !strings.Contains(env, "PATH="+DefaultPath) || !strings.Contains(env, "HOSTNAME=pod") {
		t.Errorf("env = %q", env)
	}
	if *s.Linux.Resources.Memory.Limit != 64<<20 || *s.Linux.Resources.CPU.Quota != 50000 || *s.Linux.Resources.CPU.Shares != 256 {
		t.Errorf("resources = %+v %+v", s.Linux.Resources.Memory, s.Linux.Resources.CPU)
	}
	if !s.Process.NoNewPrivileges || s.Root.Readonly {
		t.Errorf("noNewPrivileges %v, read-only root %v; want true, false", s.Process.NoNewPrivileges, s.Root.Readonly)
	}
	// A limit above the VM's CPUs is capped to them; one below stays.
	for _, tc := range []struct{ limit, capacity, quota int64 }{{4000, 1000, 100000}, {500, 1000, 50000}, {4000, 0, 400000}} {
		c.Resources.CPULimitMilli = tc.limit
		s, err := Spec(c, Params{Rootfs: rootfs, Volumes: map[string]string{"data": "/d"}, CPUCapacityMilli: tc.capacity})
		if err != nil || *s.Linux.Resources.CPU.Quota != tc.quota {
			t.Errorf("limit %dm in a VM of %dm: quota %d (%v), want %d", tc.limit, tc.capacity, *s.Linux.Resources.CPU.Quota, err, tc.quota)
		}
	}
	// runAsNonRoot: refused as root, naming the field; fine as another uid.
	root := &guestchannel.Container{Name: "r", Cmd: []string{"/app"}, RunAsNonRoot: true, ReadOnlyRootFilesystem: true}
	if _, err := Spec(root, Params{Rootfs: rootfs}); err == nil || !strings.Contains(err.Error(), "securityContext.runAsNonRoot") {
		t.Errorf("runAsNonRoot as root: %v, want a refusal naming the field", err)
	}
	root.RunAsUser = &uid
	if s, err := Spec(root, Params{Rootfs: rootfs}); err != nil || !s.Root.Readonly {
		t.Errorf("runAsNonRoot as uid 1000 with a read-only root: %v, %+v", err, s.Root)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			t.Errorf("a container has its own network namespace; the pod shares the guest's")
		}
	}
	if len(s.Linux.Namespaces) != 4 {
		t.Errorf("namespaces = %+v, want pid, mount, ipc, uts", s.Linux.Namespaces)
	}
	last := s.Mounts[len(s.Mounts)-1]
	if last.Destination != "/data" || last.Source != "/disk/volumes/data" || !reflect.DeepEqual(last.Options, []string{"rbind", "rprivate", "ro"}) {
		t.Errorf("volume mount = %+v", last)
	}

	c.RunAsUser = &uid
	c.User = ""
	if s, err = Spec(c, Params{Rootfs: rootfs, Volumes: map[string]string{"data": "/x"}}); err != nil || s.Process.User.UID != 1000 || s.Process.User.GID != 0 {
		t.Fatalf("runAsUser: %+v, %v", s, err)
	}
	for _, bad := range []func(*guestchannel.Container){
		func(c *guestchannel.Container) { c.User = "nobody-here" },
		func(c *guestchannel.Container) { c.WorkingDir = "relative" },
		func(c *guestchannel.Container) { c.VolumeMounts[0].Name = "missing" },
		func(c *guestchannel.Container) { c.Env = []guestchannel.EnvVar{{Name: "A=B"}} },
	} {
		c2 := *c
		c2.VolumeMounts = append([]guestchannel.VolumeMount(nil), c.VolumeMounts...)
		c2.RunAsUser = nil
		bad(&c2)
		if _, err := Spec(&c2, Params{Rootfs: rootfs, Volumes: map[string]string{"data": "/x"}}); err == nil || !strings.Contains(err.Error(), "container app") {
			t.Errorf("bad container %+v: error %v, want one naming the container", c2, err)
		}
	}
}

// A pod with DNS gets its resolv.conf bind-mounted read-only; one without
// keeps the image's.
func TestSpecMountsResolvConf(t *testing.T) {
	c := &guestchannel.Container{Name: "app", Cmd: []string{"/app"}}
	for _, tc := range []struct {
		resolv string
		want   bool
	}{{"/disk/etc/resolv.conf", true}, {"", false}} {
		s, err := Spec(c, Params{Rootfs: t.TempDir(), Hostname: "pod", ResolvConf: tc.resolv})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, m := range s.Mounts {
			if m.Destination == "/etc/resolv.conf" {
				found = m.Source == tc.resolv && slices.Contains(m.Options, "ro")
			}
		}
		if found != tc.want {
			t.Errorf("ResolvConf %q: mount of /etc/resolv.conf read-only from it = %v, want %v (%+v)", tc.resolv, found, tc.want, s.Mounts)
		}
	}
	d := &guestchannel.DNSConfig{Nameservers: []string{"10.88.0.2"}, Searches: []string{"default.pod.podvisor.local"}}
	if got := string(d.ResolvConf()); got != "nameserver 10.88.0.2\nsearch default.pod.podvisor.local\n" {
		t.Errorf("resolv.conf = %q", got)
	}
	spec := guestchannel.PodSpec{DNS: &guestchannel.DNSConfig{Nameservers: []string{"x"}}}
	if err := spec.Validate(); err == nil || !strings.Contains(err.Error(), "dns.nameservers[0]") {
		t.Errorf("validate of a bad nameserver: %v", err)
	}
}
