package vmboot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// SCSIDrivers are the controllers whose disks carry a pod's units: VMware's
// paravirtual SCSI and LSI Logic, and virtio-scsi. IDE and SATA controllers
// (the boot disk, a configuration disk) also appear as SCSI hosts and are
// left out, so "scsi0" is the first controller of these kinds.
var SCSIDrivers = []string{"vmw_pvscsi", "virtio_scsi", "mptspi", "mptsas"}

// SCSIUnits maps the VM's disk units to device nodes, as the kernel shows
// them under sys (/sys): "scsi<bus>:<unit>" → devDir/sdX, where bus is the
// controller's index among the SCSIDrivers hosts in PCI order (vSphere
// numbers its SCSI controllers in slot order) and unit is the SCSI target
// (vSphere's unit number; LUN 0).
func SCSIUnits(sys, devDir string) (map[string]string, error) {
	hostsDir := filepath.Join(sys, "class/scsi_host")
	entries, err := os.ReadDir(hostsDir)
	if err != nil {
		return nil, fmt.Errorf("scsi hosts: %w", err)
	}
	type host struct {
		n    int
		path string // the device path, in PCI order
	}
	var hosts []host
	for _, e := range entries {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "host"))
		if err != nil {
			continue
		}
		name, err := os.ReadFile(filepath.Join(hostsDir, e.Name(), "proc_name"))
		if err != nil || !contains(SCSIDrivers, strings.TrimSpace(string(name))) {
			continue
		}
		path, err := filepath.EvalSymlinks(filepath.Join(hostsDir, e.Name()))
		if err != nil {
			path = e.Name()
		}
		hosts = append(hosts, host{n, path})
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].path < hosts[j].path })
	bus := map[int]int{}
	for i, h := range hosts {
		bus[h.n] = i
	}

	units := map[string]string{}
	disks, err := os.ReadDir(filepath.Join(sys, "class/scsi_disk"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("scsi disks: %w", err)
	}
	for _, d := range disks {
		// H:C:T:L
		f := strings.Split(d.Name(), ":")
		if len(f) != 4 || f[3] != "0" {
			continue
		}
		h, err1 := strconv.Atoi(f[0])
		target, err2 := strconv.Atoi(f[2])
		b, ok := bus[h]
		if err1 != nil || err2 != nil || !ok {
			continue
		}
		blocks, err := os.ReadDir(filepath.Join(sys, "class/scsi_disk", d.Name(), "device/block"))
		if err != nil || len(blocks) == 0 {
			continue // the block device is not registered yet
		}
		units[fmt.Sprintf("scsi%d:%d", b, target)] = filepath.Join(devDir, blocks[0].Name())
	}
	return units, nil
}

// WaitUnits polls SCSIUnits until every unit of want has a device whose
// node exists, or the deadline passes: the kernel scans SCSI buses
// asynchronously after the driver loads.
func WaitUnits(sys, devDir string, want []string, timeout time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		units, err := SCSIUnits(sys, devDir)
		if err != nil && time.Now().After(deadline) {
			return nil, err
		}
		var missing []string
		for _, u := range want {
			if _, err := os.Stat(units[u]); units[u] == "" || err != nil {
				missing = append(missing, u)
			}
		}
		if len(missing) == 0 {
			got := map[string]string{}
			for _, u := range want {
				got[u] = units[u]
			}
			return got, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("disks %s did not appear within %s (found %v)", strings.Join(missing, ", "), timeout, units)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
