package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/disks"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/nics"
	"github.com/podvisor/podvisor/agent/runtime"
)

// standby is a guest booted ahead of the VM that takes it over
// (BootConfig.Takeover): what an instant clone's child resumes from on a
// real hypervisor, the parent's guest already booted. It holds the disks
// it mounted and which files they were.
type standby struct {
	boot    guestchannel.BootConfig
	disks   []guestchannel.Disk
	files   map[string]fileID // unit → the file or device mounted
	mounted *disks.Mounted
}

// fileID identifies a file whatever its name: the hypervisor moves the
// standby's disk files to the owning VM's names, and the mounts stay.
type fileID struct{ dev, ino uint64 }

func identify(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// standBy prepares the guest from cfg (init, the disks mounted, the
// runtime found), then waits for the owning VM's configuration on the
// takeover descriptor and returns it. It returns ctx's error when the
// guest is powered off first.
func standBy(ctx context.Context, log *slog.Logger, cfg *bootconfig.Config) (*standby, *bootconfig.Config, error) {
	fd, err := cfg.Boot.TakeoverFD()
	if err != nil {
		return nil, nil, err
	}
	takeover := os.NewFile(uintptr(fd), "takeover")
	defer takeover.Close()
	began := time.Now()
	if err := initGuest(log, "", cfg.Boot.StateDir); err != nil {
		return nil, nil, fmt.Errorf("init: %w", err)
	}
	s, err := standbyOf(cfg, nil)
	if err != nil {
		return nil, nil, err
	}
	if s.mounted, err = disks.Mount(cfg.Spec, cfg.Boot.Devices, filepath.Join(cfg.Boot.StateDir, "disks")); err != nil {
		return nil, nil, err
	}
	if _, err := runtime.New(cfg.Boot.Runtime, filepath.Join(cfg.Boot.StateDir, "runtime")); err != nil {
		_ = s.mounted.Unmount()
		return nil, nil, err
	}
	log.Info("standby: prepared, waiting to be taken over", "took", time.Since(began).Round(time.Millisecond))

	type read struct {
		data []byte
		err  error
	}
	got := make(chan read, 1)
	go func() {
		data, err := io.ReadAll(takeover)
		got <- read{data, err}
	}()
	var r read
	select {
	case <-ctx.Done():
		_ = takeover.Close() // ends the read
		return nil, nil, errors.Join(ctx.Err(), s.mounted.Unmount())
	case r = <-got:
	}
	waited := time.Since(began)
	if r.err != nil {
		_ = s.mounted.Unmount()
		return nil, nil, fmt.Errorf("takeover: %w", r.err)
	}
	next, err := bootconfig.Parse(r.data)
	if err == nil && next.Boot.Takeover != "" {
		err = fmt.Errorf("takeover: the owning VM's configuration asks for a standby again")
	}
	if err != nil {
		_ = s.mounted.Unmount()
		return nil, nil, err
	}
	if err := setHostname(next.Spec); err != nil {
		_ = s.mounted.Unmount()
		return nil, nil, err
	}
	log.Info("standby: taken over", "pod", next.Spec.Namespace+"/"+next.Spec.Name, "vm", next.Boot.VMUUID, "after", waited.Round(time.Millisecond))
	return s, next, nil
}

// standbyOf records which files cfg's disks are, with the disks mounted
// from them (nil: not yet).
func standbyOf(cfg *bootconfig.Config, mounted *disks.Mounted) (*standby, error) {
	s := &standby{boot: cfg.Boot, disks: cfg.Spec.Disks, files: map[string]fileID{}, mounted: mounted}
	for _, d := range cfg.Spec.Disks {
		var err error
		if s.files[d.Unit], err = identify(cfg.Boot.Devices[d.Unit]); err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.Unit, err)
		}
	}
	return s, nil
}

// setHostname gives the guest the pod's hostname (as PID 1 only: a test
// runs the agent in a namespace of its own otherwise).
func setHostname(spec *guestchannel.PodSpec) error {
	if h := hostname(spec); h != "" && os.Getpid() == 1 {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	return nil
}

// handOver ends a template's pod in a VM a forked child has taken (its
// channel already ended): the template's containers are killed at once
// and what they wrote is removed (what they were run for, the disks
// mounted and formatted, the image's pages read, stays), the cards are
// bound again, and the guest goes on as the child's, on the disks still
// mounted when they are the child's too (agent.mount).
func (a *agent) handOver(cfg, child *bootconfig.Config, mounted *disks.Mounted) *handedOver {
	t := time.Now()
	a.mu.Lock()
	a.stopping = true
	pod := a.pod
	a.mu.Unlock()
	if pod != nil {
		pod.Stop(0)
		if err := pod.Close(); err != nil {
			a.log.Warn("forked: the template's pod not closed cleanly", "err", err)
		}
		// The child's disk is a copy of the template's: the template's
		// logs, upper directories and volumes would stay on it for the
		// child's lifetime, read by no one.
		if err := pod.RemoveFiles(); err != nil {
			a.log.Warn("forked: the template's files not all removed", "err", err)
		}
	}
	next := &handedOver{cfg: child}
	if mounted != nil {
		sb, err := standbyOf(cfg, mounted)
		if err != nil {
			// The child mounts its disks afresh, as a boot does.
			a.log.Warn("forked: the template's disks not kept", "err", err)
			if err := mounted.Unmount(); err != nil {
				a.log.Warn("forked: the template's disks not unmounted", "err", err)
			}
		}
		next.standby = sb
	}
	if err := setHostname(child.Spec); err != nil {
		a.log.Warn("forked", "err", err)
	}
	// The child's cards have addresses of their own, which the drivers
	// read only when they bind: bound again whether or not the child's
	// spec has its NICs yet (one forked ahead of its network binds them
	// again once that comes too, agent.network), so that nothing of the
	// guest goes on with the template's addresses.
	a.rebindCards("forked")
	a.log.Info("forked: taken over", "template", cfg.Spec.Name, "pod", child.Spec.Namespace+"/"+child.Spec.Name,
		"vm", child.Boot.VMUUID, "stop_ms", ms(time.Since(t)))
	return next
}

// mount gives the pod its disks: the standby's, already mounted, when the
// VM's are the very same (same units, roles and images, every device the
// same file, the same state directory); otherwise the standby's are
// unmounted and the VM's mounted afresh, as on a plain boot.
func (a *agent) mount(cfg *bootconfig.Config) (*disks.Mounted, error) {
	dir := filepath.Join(cfg.Boot.StateDir, "disks")
	s := a.standby
	if s == nil {
		return disks.Mount(cfg.Spec, cfg.Boot.Devices, dir)
	}
	a.standby = nil
	if why := s.differs(cfg); why != "" {
		a.log.Warn("standby: its disks are not the VM's; mounting the VM's", "why", why)
		if err := s.mounted.Unmount(); err != nil {
			return nil, err
		}
		return disks.Mount(cfg.Spec, cfg.Boot.Devices, dir)
	}
	return s.mounted, nil
}

// differs says how the owning VM's disks differ from the standby's, ""
// when they are the same.
func (s *standby) differs(cfg *bootconfig.Config) string {
	if cfg.Boot.StateDir != s.boot.StateDir {
		return "another state directory"
	}
	strip := func(ds []guestchannel.Disk) []guestchannel.Disk {
		out := slices.Clone(ds)
		for i := range out {
			out[i].Path = "" // a datastore path, named after the VM
		}
		return out
	}
	if !slices.Equal(strip(cfg.Spec.Disks), strip(s.disks)) {
		return "other disks in the spec"
	}
	units := slices.Sorted(maps.Keys(s.files))
	for _, u := range units {
		id, err := identify(cfg.Boot.Devices[u])
		if err != nil || id != s.files[u] {
			return "unit " + u + " is another file"
		}
	}
	return ""
}

// reprobeNICs binds this guest's PCI network cards again (nics.Reprobe).
func reprobeNICs() (int, error) {
	h, err := routeHandle()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return 0, err
	}
	return nics.Reprobe(links, "/sys")
}
