package nativevm_test

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
)

// TestARunningGuestSeesItsDisksChange: spec.disks changed on a VM that
// runs reaches its guest without a power cycle, as on vSphere: the disk
// added is a new block device of its size in the guest at once (sdc, next
// to the data disk's sdb), what the guest writes on it is on the disk's
// file, and the disk grown has its new size. Removed from the spec, the
// disk is gone from the guest while the data disk stays.
func TestARunningGuestSeesItsDisksChange(t *testing.T) {
	privtest.RequireTools(t, "nsenter")
	e := newEnv(t)
	decl, host, r := e.runWithDataDisk()
	ref := e.vm(r).Reference().Value
	e.waitConsole(ref, "init: ready")
	g, _ := e.dc.Guests().Guest(ref)
	waitGuestDevices(t, g.PID, map[string]int64{"sdb": 64 << 20})

	decl.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "128Mi"}, {Name: "logs", Size: "32Mi"}}
	e.apply(decl, host)
	waitGuestDevices(t, g.PID, map[string]int64{"sdb": 128 << 20, "sdc": 32 << 20})
	if now, ok := e.dc.Guests().Guest(ref); !ok || now.PID != g.PID {
		t.Fatalf("the guest was restarted (pid %d, before %d): disks are hot-added", now.PID, g.PID)
	}
	inGuest(t, g.PID, "echo written in the guest > /dev/sdc")
	now, _ := e.dc.Guests().Guest(ref)
	var logs string
	for _, d := range now.VM.Disks {
		if strings.HasSuffix(d.Path, "/logs-flat.vmdk") {
			logs = d.Path
		}
	}
	if b, err := os.ReadFile(logs); err != nil || !strings.HasPrefix(string(b), "written in the guest") {
		t.Errorf("the hot-added disk's file %q starts with %.30q (%v), want what the guest wrote on sdc", logs, b, err)
	}

	decl.VM.Spec.Disks = []events.VMDisk{{Name: "data", Size: "128Mi"}}
	e.apply(decl, host)
	waitGuestDevices(t, g.PID, map[string]int64{"sdb": 128 << 20})
}

// inGuest runs a shell command in the guest whose PID 1 is pid, with its
// root and mounts, and returns its output.
func inGuest(t *testing.T, pid int, cmd string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--mount", "--root",
		"/bin/busybox", "sh", "-c", "PATH=/bin; "+cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("in the guest, %s: %v: %s", cmd, err, out)
	}
	return string(out)
}

// waitGuestDevices waits until the block devices sd* in the guest's /dev
// are want, with the sizes the guest's own blockdev reads.
func waitGuestDevices(t *testing.T, pid int, want map[string]int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := map[string]int64{}
		out := inGuest(t, pid, `for d in /dev/sd*; do [ -b "$d" ] && echo "${d#/dev/} $(blockdev --getsize64 "$d")"; done; true`)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var name string
			var size int64
			if _, err := fmt.Sscan(line, &name, &size); err == nil {
				got[name] = size
			}
		}
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running guest's disks %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
