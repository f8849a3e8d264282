package nics

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// Reprobe binds each PCI network card of the guest to its driver again,
// so that every interface reads the MAC address the hypervisor presents
// now. A forked VM's child resumes its parent's memory, where the drivers
// still hold the parent's addresses, while vSphere's instant clone gives the
// child's cards addresses of their own; a driver reads its card's address
// when it binds. Interfaces without a PCI device (loopback, veths, a
// simulated guest's cards) are left alone, and so is every interface that
// is not the very one of this network namespace by name, index and address
// (links): a simulated guest sees its host's /sys, whose cards are not its
// own. sys is /sys (a test's tree otherwise). It returns how many cards
// were bound again.
func Reprobe(links []netlink.Link, sys string) (int, error) {
	entries, err := os.ReadDir(filepath.Join(sys, "class", "net"))
	if err != nil {
		return 0, fmt.Errorf("network cards: %w", err)
	}
	own := map[string]netlink.Link{}
	for _, l := range links {
		own[l.Attrs().Name] = l
	}
	n := 0
	var errs []error
	for _, e := range entries {
		if l, ok := own[e.Name()]; !ok || !sameLink(l, filepath.Join(sys, "class", "net", e.Name())) {
			continue
		}
		dev := filepath.Join(sys, "class", "net", e.Name(), "device")
		subsystem, err := filepath.EvalSymlinks(filepath.Join(dev, "subsystem"))
		if err != nil || filepath.Base(subsystem) != "pci" {
			continue
		}
		driver, err := filepath.EvalSymlinks(filepath.Join(dev, "driver"))
		if err != nil {
			continue // no driver bound: nothing holds an address
		}
		real, err := filepath.EvalSymlinks(dev)
		if err != nil {
			continue
		}
		slot := []byte(filepath.Base(real)) // the PCI address, 0000:0b:00.0
		if err := os.WriteFile(filepath.Join(driver, "unbind"), slot, 0o200); err != nil {
			errs = append(errs, fmt.Errorf("%s: unbind from %s: %w", e.Name(), filepath.Base(driver), err))
			continue
		}
		if err := os.WriteFile(filepath.Join(driver, "bind"), slot, 0o200); err != nil {
			errs = append(errs, fmt.Errorf("%s: bind to %s again: %w", e.Name(), filepath.Base(driver), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// sameLink says whether the interface sysfs shows at dir is l: the same
// index and address.
func sameLink(l netlink.Link, dir string) bool {
	index, err1 := os.ReadFile(filepath.Join(dir, "ifindex"))
	addr, err2 := os.ReadFile(filepath.Join(dir, "address"))
	return err1 == nil && err2 == nil && strings.TrimSpace(string(index)) == strconv.Itoa(l.Attrs().Index) &&
		strings.EqualFold(strings.TrimSpace(string(addr)), l.Attrs().HardwareAddr.String())
}
