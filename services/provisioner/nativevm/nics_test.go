package nativevm_test

import (
	"context"
	"maps"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/nativevm"
)

// TestANICHotAddedWaitsForTheGuestsNextBoot: a network added to
// spec.networks of a running VM, as a VM Operator user adds one. The NIC
// is hot-added: vCenter reports the card and the guest has it at once,
// without a reboot, with its MAC and no address, since a guest configures
// its network from its cloud-init data when it boots. The status says no
// more than that: the NIC is attached with its allocated address and not
// configured (RebootRequired, GuestNetworkConfigured False), and
// status.ips lists only the address the guest has. Powered off, the guest
// has no address and the status lists none; powered on again, the guest
// configures both NICs from its data and the status lists both.
func TestANICHotAddedWaitsForTheGuestsNextBoot(t *testing.T) {
	privtest.RequireTools(t, "nsenter")
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	host := e.dc.Hosts()[0]
	decl := vmDecl("small", "")
	r := e.runOn(decl, host)
	vm := e.vm(r)
	ref := vm.Reference().Value
	e.waitConsole(ref, "init: ready", "init: eth0 10.244.0.7/16")
	g, _ := e.dc.Guests().Guest(ref)
	wantIPs(t, r, "10.244.0.7")
	guestNetworkConfigured(t, r, events.ConditionTrue, "")
	booted := r.Status.Network.GuestBoot
	if booted == nil || booted.Time.IsZero() || booted.Addresses[defaultNIC.MAC] != "10.244.0.7/16" {
		t.Fatalf("status.network.guestBoot %+v: want vCenter's boot time and the address the guest read", booted)
	}

	decl.VM.Spec.Networks = []string{"default", "storage"}
	r = e.applyWith(decl, host, defaultNIC, storageNIC)
	if len(r.Status.NICs) != 2 {
		t.Fatalf("status.nics %+v: want the two attachments", r.Status.NICs)
	}
	wantIPs(t, r, "10.244.0.7")
	wantInterfaces(t, r, []events.VMNetworkInterfaceStatus{
		{Name: "default", MACAddr: defaultNIC.MAC, Attached: true, Allocated: "10.244.0.7/16",
			IP: events.VMNetworkInterfaceIPStatus{Addresses: []string{"10.244.0.7/16"}}},
		{Name: "storage", MACAddr: storageNIC.MAC, Attached: true, Allocated: "10.245.0.9/24", Reason: events.VMGuestNetworkRebootRequired},
	})
	c := guestNetworkConfigured(t, r, events.ConditionFalse, events.VMGuestNetworkRebootRequired)
	if !strings.Contains(c.Message, "network storage (10.245.0.9/24 on "+storageNIC.MAC+")") || !strings.Contains(c.Message, "power the VM off and on") {
		t.Errorf("GuestNetworkConfigured = %+v: want the NIC named and the way to configure it", c)
	}
	hardwareSynced(t, r, events.ConditionTrue)
	if b := r.Status.Network.GuestBoot; b == nil || !b.Time.Equal(booted.Time) || !maps.Equal(b.Addresses, booted.Addresses) {
		t.Errorf("status.network.guestBoot %+v after the hot-add, want the boot before it, %+v", b, booted)
	}
	if cards := e.cards(r); !slices.Equal(cards, []string{defaultNIC.MAC, storageNIC.MAC}) {
		t.Errorf("vCenter reports the cards %v, want %s and %s", cards, defaultNIC.MAC, storageNIC.MAC)
	}
	if now, ok := e.dc.Guests().Guest(ref); !ok || now.PID != g.PID {
		t.Fatalf("the guest was restarted (pid %d, before %d): a NIC is hot-added", now.PID, g.PID)
	}
	wantGuestNICs(t, g.PID, map[string]string{
		"eth0": defaultNIC.MAC + " 10.244.0.7/16",
		"eth1": storageNIC.MAC, // there, unconfigured
	})

	// Powered off: no guest, no address.
	off := vmDecl("small", events.PowerStatePoweredOff)
	off.VM.Spec.Networks = decl.VM.Spec.Networks
	r = e.applyWith(off, host, defaultNIC, storageNIC)
	if r.Status.PowerState != events.PowerStatePoweredOff {
		t.Fatalf("status %+v: want poweredOff", r.Status)
	}
	wantIPs(t, r)
	guestNetworkConfigured(t, r, events.ConditionFalse, events.VMGuestNetworkNotRunning)
	for _, in := range r.Status.Network.Interfaces {
		if in.Reason != events.VMGuestNetworkNotRunning || len(in.IP.Addresses) != 0 || !in.Attached {
			t.Errorf("interface %+v of the powered-off VM: want attached, no address, GuestNotRunning", in)
		}
	}
	if r.Status.Network.GuestBoot != nil {
		t.Errorf("guest boot %+v recorded for a powered-off VM", r.Status.Network.GuestBoot)
	}

	// Powered on: the guest boots with both cards and configures both.
	r = e.applyWith(decl, host, defaultNIC, storageNIC)
	wantIPs(t, r, "10.244.0.7", "10.245.0.9")
	guestNetworkConfigured(t, r, events.ConditionTrue, "")
	if b := r.Status.Network.GuestBoot; b == nil || !b.Time.After(booted.Time) || len(b.Addresses) != 2 {
		t.Errorf("status.network.guestBoot %+v: want a later boot that read both addresses", b)
	}
	wantInterfaces(t, r, []events.VMNetworkInterfaceStatus{
		{Name: "default", MACAddr: defaultNIC.MAC, Attached: true, Allocated: "10.244.0.7/16",
			IP: events.VMNetworkInterfaceIPStatus{Addresses: []string{"10.244.0.7/16"}}},
		{Name: "storage", MACAddr: storageNIC.MAC, Attached: true, Allocated: "10.245.0.9/24",
			IP: events.VMNetworkInterfaceIPStatus{Addresses: []string{"10.245.0.9/24"}}},
	})
	e.waitConsole(ref, "init: eth1 10.245.0.9/24", "init: ready")
	g, _ = e.dc.Guests().Guest(ref)
	wantGuestNICs(t, g.PID, map[string]string{
		"eth0": defaultNIC.MAC + " 10.244.0.7/16",
		"eth1": storageNIC.MAC + " 10.245.0.9/24",
	})

	// A pass of drift repair finds nothing to change.
	if repaired, err := e.ctl.Resync(ctx); err != nil || len(repaired) != 0 {
		t.Errorf("Resync = %v, %v; want nothing to repair", repaired, err)
	}
}

// TestAResizeThatAddsANICConfiguresItAtTheBoot: one declaration both
// resizes a running VM and adds a network. The VM is powered off for the
// resize, reconfigured (new size, the card, the data that gives it its
// address) and powered on: its guest boots with the new data and
// configures both NICs, and the status lists both (not RebootRequired
// from the boot before the resize).
func TestAResizeThatAddsANICConfiguresItAtTheBoot(t *testing.T) {
	privtest.RequireTools(t, "nsenter")
	e := newEnv(t)
	e.declareSmall()
	e.declareClass("medium", events.VirtualMachineClassSpec{CPUs: 2, Memory: "2Gi"})
	host := e.dc.Hosts()[0]
	r := e.runOn(vmDecl("small", ""), host)
	ref := e.vm(r).Reference().Value
	e.waitConsole(ref, "init: ready", "init: eth0 10.244.0.7/16")
	booted := r.Status.Network.GuestBoot
	if booted == nil || booted.Time.IsZero() {
		t.Fatalf("status.network.guestBoot %+v: want vCenter's boot time", booted)
	}

	decl := vmDecl("medium", "")
	decl.VM.Spec.Networks = []string{"default", "storage"}
	r = e.applyWith(decl, host, defaultNIC, storageNIC)
	if r.Status.Size.CPUs != 2 || r.Status.PowerState != events.PowerStatePoweredOn {
		t.Fatalf("status %+v: want the VM resized to 2 CPUs and running", r.Status)
	}
	wantIPs(t, r, "10.244.0.7", "10.245.0.9")
	wantInterfaces(t, r, []events.VMNetworkInterfaceStatus{
		{Name: "default", MACAddr: defaultNIC.MAC, Attached: true, Allocated: "10.244.0.7/16",
			IP: events.VMNetworkInterfaceIPStatus{Addresses: []string{"10.244.0.7/16"}}},
		{Name: "storage", MACAddr: storageNIC.MAC, Attached: true, Allocated: "10.245.0.9/24",
			IP: events.VMNetworkInterfaceIPStatus{Addresses: []string{"10.245.0.9/24"}}},
	})
	guestNetworkConfigured(t, r, events.ConditionTrue, "")
	if b := r.Status.Network.GuestBoot; b == nil || !b.Time.After(booted.Time) || len(b.Addresses) != 2 {
		t.Errorf("status.network.guestBoot %+v: want the boot after the resize, which read both addresses", b)
	}
	// The guest has what the status says.
	e.waitConsole(ref, "init: eth1 10.245.0.9/24")
	g, _ := e.dc.Guests().Guest(ref)
	wantGuestNICs(t, g.PID, map[string]string{
		"eth0": defaultNIC.MAC + " 10.244.0.7/16",
		"eth1": storageNIC.MAC + " 10.245.0.9/24",
	})
}

// TestAPowerCycleBehindTheControllersBackConfiguresAHotAddedNIC: a NIC
// hot-added (RebootRequired), then the VM powered off in vCenter, behind
// the controller's back; drift repair powers it on again. That boot read
// the data with the new NIC's address: the status lists it.
func TestAPowerCycleBehindTheControllersBackConfiguresAHotAddedNIC(t *testing.T) {
	privtest.RequireTools(t, "nsenter")
	e := newEnv(t)
	ctx := context.Background()
	e.declareSmall()
	host := e.dc.Hosts()[0]
	r := e.runOn(vmDecl("small", ""), host)
	vm := e.vm(r)
	e.waitConsole(vm.Reference().Value, "init: ready", "init: eth0 10.244.0.7/16")
	decl := vmDecl("small", "")
	decl.VM.Spec.Networks = []string{"default", "storage"}
	r = e.applyWith(decl, host, defaultNIC, storageNIC)
	wantIPs(t, r, "10.244.0.7")
	guestNetworkConfigured(t, r, events.ConditionFalse, events.VMGuestNetworkRebootRequired)

	e.powerOff(vm)
	if repaired, err := e.ctl.Resync(ctx); err != nil || repaired[nativevm.RepairPower] != 1 {
		t.Fatalf("Resync = %v, %v; want the VM powered on again", repaired, err)
	}
	r, _, err := e.vms.Get(ctx, events.VMRecordKey(r.Namespace, r.Name))
	if err != nil || r == nil {
		t.Fatalf("the record after the repair: %v", err)
	}
	wantIPs(t, r, "10.244.0.7", "10.245.0.9")
	guestNetworkConfigured(t, r, events.ConditionTrue, "")
	e.waitConsole(vm.Reference().Value, "init: eth1 10.245.0.9/24")
}

// wantIPs fails the test unless status.ips are want.
func wantIPs(t *testing.T, r *events.VMRecord, want ...string) {
	t.Helper()
	if !slices.Equal(r.Status.IPs, want) && (len(want) != 0 || len(r.Status.IPs) != 0) {
		t.Fatalf("status.ips %v, want %v", r.Status.IPs, want)
	}
}

// wantInterfaces fails the test unless status.network.interfaces are want.
func wantInterfaces(t *testing.T, r *events.VMRecord, want []events.VMNetworkInterfaceStatus) {
	t.Helper()
	got := r.Status.Network.Interfaces
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		g, w := got[i], want[i]
		ok = g.Name == w.Name && g.MACAddr == w.MACAddr && g.Attached == w.Attached && g.Allocated == w.Allocated &&
			g.Reason == w.Reason && slices.Equal(g.IP.Addresses, w.IP.Addresses)
	}
	if !ok {
		t.Fatalf("status.network.interfaces\n%+v\nwant\n%+v", got, want)
	}
}

// guestNetworkConfigured fails the test unless the record's
// GuestNetworkConfigured condition has status and reason.
func guestNetworkConfigured(t *testing.T, r *events.VMRecord, status, reason string) events.PodCondition {
	t.Helper()
	c, ok := r.Condition(events.VMConditionGuestNetworkConfigured)
	if !ok || c.Status != status || c.Reason != reason {
		t.Fatalf("GuestNetworkConfigured = %+v, want %s %s", c, status, reason)
	}
	return c
}

// cards are the MACs of the network cards vCenter reports on r's VM, in
// device order.
func (e *env) cards(r *events.VMRecord) []string {
	e.t.Helper()
	devices, err := e.vm(r).Device(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
		out = append(out, d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard().MacAddress)
	}
	return out
}

// wantGuestNICs fails the test unless the guest whose PID 1 is pid has the
// interfaces eth* of want, each as "<mac>[ <address>...]", as the guest's
// own ip reads them in its network namespace.
func wantGuestNICs(t *testing.T, pid int, want map[string]string) {
	t.Helper()
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--net", "--mount", "--root",
		"/bin/busybox", "sh", "-c", "PATH=/bin; ip -o link; ip -o -4 addr").CombinedOutput()
	if err != nil {
		t.Fatalf("the guest's interfaces: %v: %s", err, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if !strings.HasPrefix(name, "eth") {
			continue
		}
		for i := 2; i+1 < len(f); i++ {
			switch f[i] {
			case "link/ether":
				got[name] = f[i+1] + got[name]
			case "inet":
				got[name] += " " + f[i+1]
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("the guest's interfaces %q, want %q\n%s", got, want, out)
	}
}

// TestANICInsertedBeforeAnotherGetsItsOwnAddress: a network inserted
// before the VM's first one. Its card, hot-added, comes after the first
// card in the VM's devices, so after a power cycle the guest's device
// order and the metadata's entry order disagree. The guest's init reads
// the network data as netplan does (each entry's card by its MAC, renamed
// to the entry's set-name), so each card gets its own network's address,
// the one the status lists for it.
func TestANICInsertedBeforeAnotherGetsItsOwnAddress(t *testing.T) {
	privtest.RequireTools(t, "nsenter")
	e := newEnv(t)
	e.declareSmall()
	host := e.dc.Hosts()[0]
	decl := vmDecl("small", "")
	r := e.runOn(decl, host)
	ref := e.vm(r).Reference().Value
	e.waitConsole(ref, "init: ready", "init: eth0 10.244.0.7/16")

	decl.VM.Spec.Networks = []string{"storage", "default"}
	e.applyWith(decl, host, storageNIC, defaultNIC)
	off := vmDecl("small", events.PowerStatePoweredOff)
	off.VM.Spec.Networks = decl.VM.Spec.Networks
	e.applyWith(off, host, storageNIC, defaultNIC)
	r = e.applyWith(decl, host, storageNIC, defaultNIC)
	if cards := e.cards(r); !slices.Equal(cards, []string{defaultNIC.MAC, storageNIC.MAC}) {
		t.Fatalf("vCenter reports the cards %v, want the first card before the one added", cards)
	}
	wantIPs(t, r, "10.245.0.9", "10.244.0.7")
	guestNetworkConfigured(t, r, events.ConditionTrue, "")
	e.waitConsole(ref, "init: eth0 10.245.0.9/24", "init: eth1 10.244.0.7/16", "init: ready")
	g, _ := e.dc.Guests().Guest(ref)
	wantGuestNICs(t, g.PID, map[string]string{
		"eth0": storageNIC.MAC + " 10.245.0.9/24",
		"eth1": defaultNIC.MAC + " 10.244.0.7/16",
	})
}
