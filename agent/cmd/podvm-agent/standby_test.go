package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/disks"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/internal/guesttest"
	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/agent/supervisor"
)

// A standby's mounted disks are the owning VM's only when they are the
// very files its configuration names: a disk file moved to the VM's name
// still is (the hypervisor renames the standby's copies), another file of
// the same name is not, nor are other disks in the spec or another state
// directory.
func TestStandbyDisksAreTheVMsOnlyWhenTheSameFiles(t *testing.T) {
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	eph, img := file("standby-eph"), file("image")
	disks := []guestchannel.Disk{
		{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4", Path: "[ds] template/eph.vmdk"},
		{Role: guestchannel.DiskImage, Unit: "scsi0:1", FS: "erofs", ChainID: "sha256:a"},
	}
	s := &standby{boot: guestchannel.BootConfig{StateDir: "/state"}, disks: disks, files: map[string]fileID{}}
	for unit, p := range map[string]string{"scsi0:0": eph, "scsi0:1": img} {
		id, err := identify(p)
		if err != nil {
			t.Fatal(err)
		}
		s.files[unit] = id
	}
	moved := filepath.Join(dir, "child-eph")
	if err := os.Rename(eph, moved); err != nil {
		t.Fatal(err)
	}
	childDisks := append([]guestchannel.Disk(nil), disks...)
	childDisks[0].Path = "[ds] child/eph.vmdk"
	cfg := func(ephPath, state string, ds []guestchannel.Disk) *bootconfig.Config {
		return &bootconfig.Config{
			Boot: guestchannel.BootConfig{StateDir: state, Devices: map[string]string{"scsi0:0": ephPath, "scsi0:1": img}},
			Spec: &guestchannel.PodSpec{Disks: ds},
		}
	}
	if why := s.differs(cfg(moved, "/state", childDisks)); why != "" {
		t.Fatalf("the standby's disk moved to the VM's name: %q, want the same disks", why)
	}
	if why := s.differs(cfg(file("other-eph"), "/state", childDisks)); !strings.Contains(why, "scsi0:0") {
		t.Fatalf("another file as disk 0: %q, want it named", why)
	}
	other := append([]guestchannel.Disk(nil), childDisks...)
	other[1].ChainID = "sha256:b"
	if why := s.differs(cfg(moved, "/state", other)); why == "" {
		t.Fatal("another image in the spec: want a difference")
	}
	if why := s.differs(cfg(moved, "/elsewhere", childDisks)); why == "" {
		t.Fatal("another state directory: want a difference")
	}
}

// fakeCards records what the agent does to the guest's cards.
type fakeCards struct {
	calls []string
	// waiting, when set, says how many updates wait, recorded with each
	// rebind.
	waiting func() int
}

func (f *fakeCards) cards() cards {
	return cards{
		rebind: func() (int, error) {
			call := "rebind"
			if f.waiting != nil {
				call += fmt.Sprintf(" (%d updates waiting)", f.waiting())
			}
			f.calls = append(f.calls, call)
			return 1, nil
		},
		configure: func(list []guestchannel.NIC) error {
			var macs []string
			for _, n := range list {
				macs = append(macs, n.MAC)
			}
			f.calls = append(f.calls, "configure ["+strings.Join(macs, " ")+"]")
			return nil
		},
	}
}

// A forked child's cards are bound again at the takeover, so that the
// drivers read the child's addresses, also when the child's spec has no
// NICs yet (forked ahead of its network).
func TestHandOverBindsTheCardsAgainForAChildWithoutNICs(t *testing.T) {
	f := &fakeCards{}
	a := &agent{log: slog.New(slog.DiscardHandler), cards: f.cards()}
	tmpl := watchedSpec("tmpl", func(s *guestchannel.PodSpec) { s.Template = true })
	child := watchedSpec("child", func(s *guestchannel.PodSpec) { s.NetworkPending = true })
	next := a.handOver(&bootconfig.Config{Spec: tmpl}, &bootconfig.Config{Spec: child}, nil)
	if next.cfg.Spec != child || next.standby != nil {
		t.Fatalf("handed over %+v, want the child's configuration and no disks", next)
	}
	if !slices.Equal(f.calls, []string{"rebind"}) {
		t.Fatalf("cards: %v, want them bound again once", f.calls)
	}
}

// A pod forked ahead of its network binds its cards again once the spec
// with the network came (the attach gave the cards the pod's MACs, by
// which its NICs are found), then configures them.
func TestNetworkBindsTheCardsAgainOnceAttached(t *testing.T) {
	pending := watchedSpec("u1", func(s *guestchannel.PodSpec) { s.NetworkPending = true })
	attached := watchedSpec("u1", func(s *guestchannel.PodSpec) {
		s.NICs = []guestchannel.NIC{{Network: "pods", MAC: "00:50:56:00:00:02", IP: "10.244.7.5", Prefix: 24}}
		s.DNS = &guestchannel.DNSConfig{Nameservers: []string{"10.0.0.53"}}
	})
	updates := make(chan *guestchannel.PodSpec, 1)
	updates <- attached
	f := &fakeCards{waiting: func() int { return len(updates) }}
	a := &agent{log: slog.New(slog.DiscardHandler), updates: updates, cards: f.cards()}
	eph := t.TempDir()
	pod, err := supervisor.New(supervisor.Config{Spec: pending, Board: supervisor.NewBoard(pending),
		Disks: &disks.Mounted{Ephemeral: eph}, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	if err := a.network(pod, &bootconfig.Config{Spec: pending}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"rebind (0 updates waiting)", "configure [00:50:56:00:00:02]"}; !slices.Equal(f.calls, want) {
		t.Fatalf("cards: %v, want %v: bound again after the network came, then configured", f.calls, want)
	}
	if b, _ := os.ReadFile(filepath.Join(eph, "etc", "resolv.conf")); !strings.Contains(string(b), "10.0.0.53") {
		t.Errorf("resolv.conf %q, want the attached spec's", b)
	}
}

// A standby's disks are the pod's once it runs; a pod that cannot start
// (no OCI runtime) still has them, and a power-off unmounts them: nothing
// of the standby stays mounted.
func TestAStandbysDisksAreUnmountedWhenItsPodCannotStart(t *testing.T) {
	privtest.Require(t, "mounting a disk needs CAP_SYS_ADMIN")
	privtest.RequireTools(t, "mkfs.ext4")
	dir := t.TempDir()
	eph := filepath.Join(dir, "disk0-flat.vmdk")
	if err := os.WriteFile(eph, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(eph, 64<<20); err != nil {
		t.Fatal(err)
	}
	spec := &guestchannel.PodSpec{Version: guestchannel.SpecVersion, UID: "u1", Namespace: "default", Name: "p", RestartPolicy: "Never",
		Disks:      []guestchannel.Disk{{Role: guestchannel.DiskEphemeral, Unit: "scsi0:0", FS: "ext4"}},
		Containers: []guestchannel.Container{{Name: "c"}}}
	state := filepath.Join(dir, "state")
	cfg := &bootconfig.Config{Boot: guestchannel.BootConfig{Channel: "unix:" + filepath.Join(dir, "no-host.sock"), StateDir: state,
		Devices: map[string]string{"scsi0:0": eph}, Runtime: filepath.Join(dir, "no-runtime")}, Spec: spec}
	m, err := disks.Mount(spec, cfg.Boot.Devices, filepath.Join(state, "disks"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Unmount() }) // should the agent leave them
	if len(guesttest.MountsUnder(state)) == 0 {
		t.Fatal("the standby's disk is not mounted: the test shows nothing")
	}
	sb, err := standbyOf(cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	var logged strings.Builder
	stopCtx, powerOff := context.WithCancel(context.Background())
	powerOff()
	next, err := runPod(context.Background(), stopCtx, slog.New(slog.NewTextHandler(&logged, nil)), cfg, sb, time.Now())
	if next != nil || err != nil {
		t.Fatalf("runPod = %+v, %v; want the pod ended cleanly by the power-off", next, err)
	}
	if !strings.Contains(logged.String(), "no-runtime") {
		t.Fatalf("want the pod unable to start for want of its runtime; log:\n%s", logged.String())
	}
	if left := guesttest.MountsUnder(state); len(left) > 0 {
		t.Fatalf("mounted after the power-off: %v", left)
	}
}
