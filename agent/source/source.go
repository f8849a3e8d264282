package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/configdisk"
	"github.com/podvisor/podvisor/agent/guestchannel"
)

// ErrNotFound is returned by Get for a key the source does not hold.
var ErrNotFound = errors.New("guestinfo key not set")

// ErrUnavailable is returned when the source is absent in this VM (no
// backdoor, no configuration disk).
var ErrUnavailable = errors.New("guestinfo source unavailable")

// Source gives guestinfo values.
type Source interface {
	// Name says where the values come from, for logs.
	Name() string
	// Get returns the value of a guestinfo key ("guestinfo.podvisor.spec").
	Get(key string) (string, error)
}

// First returns the first source that is present, in order; each opener
// returns ErrUnavailable (wrapped) when its source is absent. The reasons
// of the absent ones are joined in the error when none is present.
func First(openers ...func() (Source, error)) (Source, error) {
	var errs []error
	for _, open := range openers {
		s, err := open()
		if err == nil {
			return s, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no guestinfo source: %w", errors.Join(errs...))
}

// Watched is a source that can be opened again by a name (Watch), for
// the agent to read it again after the first stage has handed over
// (guestchannel.BootConfig.Watch): the backdoor's guestinfo and a
// configuration disk.
type Watched interface {
	Watch() string
}

// Reopen opens the source a Watch names afresh: "guestinfo" or
// "configdisk:<device>", the device read past the page cache, so that a
// disk the hypervisor changed under the guest (a forked VM's own) is read
// as it is now.
func Reopen(watch string) (Source, error) {
	switch {
	case watch == guestchannel.WatchGuestinfo:
		return Guestinfo()
	case strings.HasPrefix(watch, guestchannel.WatchConfigDisk) && len(watch) > len(guestchannel.WatchConfigDisk):
		dev := strings.TrimPrefix(watch, guestchannel.WatchConfigDisk)
		values, err := readConfigDisk(dev, true)
		if err != nil {
			return nil, fmt.Errorf("configuration disk %s: %w", dev, err)
		}
		return Values{From: "configuration disk " + dev, Map: values, Device: dev}, nil
	default:
		return nil, fmt.Errorf("%q names no source: want guestinfo or %s<device>", watch, guestchannel.WatchConfigDisk)
	}
}

// Values is a source held in memory (a configuration disk once read).
type Values struct {
	From string
	Map  map[string]string
	// Device is the configuration disk the values were read from, empty
	// for values that came from elsewhere.
	Device string
}

// Watch implements Watched: "configdisk:<device>", or empty for values
// read from no device.
func (v Values) Watch() string {
	if v.Device == "" {
		return ""
	}
	return guestchannel.WatchConfigDisk + v.Device
}

// Name implements Source.
func (v Values) Name() string { return v.From }

// Get implements Source.
func (v Values) Get(key string) (string, error) {
	s, ok := v.Map[key]
	if !ok {
		return "", fmt.Errorf("%s: %s: %w", v.From, key, ErrNotFound)
	}
	return s, nil
}

// ConfigDisk finds the configuration disk among the block devices listed in
// sysBlock (/sys/block) and reads it from devDir (/dev). Devices are tried
// in name order; the first carrying configdisk.Magic wins.
func ConfigDisk(sysBlock, devDir string) (Source, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("configuration disk: %w: %w", ErrUnavailable, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, name := range names {
		dev := filepath.Join(devDir, name)
		values, err := readConfigDisk(dev, false)
		if errors.Is(err, configdisk.ErrNotConfigDisk) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("configuration disk %s: %w", dev, err)
		}
		return Values{From: "configuration disk " + dev, Map: values, Device: dev}, nil
	}
	return nil, fmt.Errorf("configuration disk: %w: no block device starts with %q", ErrUnavailable, configdisk.Magic[:len(configdisk.Magic)-1])
}

// readConfigDisk reads a configuration disk; again drops the device's
// cached blocks first, since the guest's page cache may hold what the disk
// said before the hypervisor changed it (an instant clone's child resumes
// its parent's memory, cache included, on a disk of its own).
func readConfigDisk(dev string, again bool) (map[string]string, error) {
	f, err := os.Open(dev)
	if err != nil {
		if again {
			return nil, err
		}
		// A device node that cannot be opened (an empty CD-ROM drive, a
		// node devtmpfs has not made yet) is not the configuration disk.
		return nil, configdisk.ErrNotConfigDisk
	}
	defer f.Close()
	if again {
		// A regular file (a test's disk) has no block cache of its own to
		// drop: its page cache is the file's, always current.
		if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil && !errors.Is(err, unix.ENOTTY) {
			return nil, fmt.Errorf("drop the cached blocks: %w", err)
		}
	}
	return configdisk.Read(f)
}
