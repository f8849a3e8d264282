package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/podvisor/podvisor/agent/configdisk"
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

// Values is a source held in memory (a configuration disk once read).
type Values struct {
	From string
	Map  map[string]string
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
		values, err := readConfigDisk(dev)
		if errors.Is(err, configdisk.ErrNotConfigDisk) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("configuration disk %s: %w", dev, err)
		}
		return Values{From: "configuration disk " + dev, Map: values}, nil
	}
	return nil, fmt.Errorf("configuration disk: %w: no block device starts with %q", ErrUnavailable, configdisk.Magic[:len(configdisk.Magic)-1])
}

func readConfigDisk(dev string) (map[string]string, error) {
	f, err := os.Open(dev)
	if err != nil {
		// A device node that cannot be opened (an empty CD-ROM drive, a
		// node devtmpfs has not made yet) is not the configuration disk.
		return nil, configdisk.ErrNotConfigDisk
	}
	defer f.Close()
	return configdisk.Read(f)
}
