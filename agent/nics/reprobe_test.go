package nics

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// Reprobe unbinds and binds again the PCI cards' devices, by their PCI
// address, and leaves virtual interfaces and cards without a driver alone.
func TestReprobeBindsPCICardsAgain(t *testing.T) {
	sys := t.TempDir()
	mk := func(p string) string {
		t.Helper()
		p = filepath.Join(sys, p)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(sys, name)); err != nil {
			t.Fatal(err)
		}
	}
	mk("bus/pci")
	driver := mk("bus/pci/drivers/vmxnet3")
	for _, f := range []string{"bind", "unbind"} {
		if err := os.WriteFile(filepath.Join(driver, f), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	card := mk("devices/pci0000:00/0000:00:15.0/0000:0b:00.0")
	link(filepath.Join(sys, "bus/pci"), "devices/pci0000:00/0000:00:15.0/0000:0b:00.0/subsystem")
	link(driver, "devices/pci0000:00/0000:00:15.0/0000:0b:00.0/driver")
	driverless := mk("devices/pci0000:00/0000:00:16.0/0000:13:00.0")
	link(filepath.Join(sys, "bus/pci"), "devices/pci0000:00/0000:00:16.0/0000:13:00.0/subsystem")
	iface := func(name string, index int, mac string, device string) netlink.Link {
		t.Helper()
		dir := mk("class/net/" + name)
		for f, v := range map[string]string{"ifindex": strconv.Itoa(index) + "\n", "address": mac + "\n"} {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if device != "" {
			link(device, "class/net/"+name+"/device")
		}
		hw, _ := net.ParseMAC(mac)
		return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, Index: index, HardwareAddr: hw}}
	}
	eth0 := iface("eth0", 2, "00:50:56:aa:bb:01", card)
	eth1 := iface("eth1", 3, "00:50:56:aa:bb:02", driverless)
	lo := iface("lo", 1, "00:00:00:00:00:00", "")
	veth := iface("veth0", 9, "02:00:00:00:00:09", mk("devices/virtual/net/veth0"))
	// A card of the host's that this namespace has a card named alike of
	// (a simulated guest's eth2, index 40, sees the host's eth2, index 4).
	hostCard := mk("devices/pci0000:00/0000:00:17.0/0000:1b:00.0")
	link(filepath.Join(sys, "bus/pci"), "devices/pci0000:00/0000:00:17.0/0000:1b:00.0/subsystem")
	link(driver, "devices/pci0000:00/0000:00:17.0/0000:1b:00.0/driver")
	iface("eth2", 4, "00:50:56:aa:bb:04", hostCard)
	guestEth2 := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth2", Index: 40}}

	n, err := Reprobe([]netlink.Link{eth0, eth1, lo, veth, guestEth2}, sys)
	if err != nil || n != 1 {
		t.Fatalf("Reprobe = %d, %v; want the one PCI card of this namespace with a driver", n, err)
	}
	for _, f := range []string{"unbind", "bind"} {
		b, _ := os.ReadFile(filepath.Join(driver, f))
		if strings.TrimSpace(string(b)) != "0000:0b:00.0" {
			t.Errorf("%s got %q, want the card's PCI address", f, b)
		}
	}
}
