package guest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/shared/servetest"
	"github.com/podvisor/podvisor/shared/sim/segment"
)

// TestGuestOutlivesTheThreadThatPoweredItOn powers a VM on from a
// goroutine that ends locked to its thread, so that the runtime ends the
// thread: a guest forked from that thread would get its Pdeathsig
// (SIGKILL) then. Once the thread is gone the guest must still run, with
// no SIGKILL pending.
func TestGuestOutlivesTheThreadThatPoweredItOn(t *testing.T) {
	m := newTestManager(t)
	vm := testVM(t, 0)
	type result struct {
		tid int
		err error
	}
	var r result
	for r.tid == 0 {
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			if unix.Gettid() == unix.Getpid() {
				// The main thread never ends (the runtime parks it
				// instead): try from another.
				runtime.UnlockOSThread()
				done <- result{}
				return
			}
			done <- result{unix.Gettid(), m.PowerOn(vm)}
		}()
		r = <-done
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	task := fmt.Sprintf("/proc/self/task/%d", r.tid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(task); os.IsNotExist(err) {
			break // the thread has ended: its death signals are sent
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d did not end", r.tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	g, ok := m.Guest(vm.Key)
	if !ok {
		t.Fatal("the guest is not listed")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.PID))
	if err != nil {
		t.Fatalf("the guest is gone once the thread that powered it on ended: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if strings.HasPrefix(v, "Z") || strings.HasPrefix(v, "X") {
				t.Errorf("the guest's init is %s once the thread that powered it on ended", v)
			}
		case "SigPnd", "ShdPnd":
			if mask, err := strconv.ParseUint(v, 16, 64); err == nil && mask&(1<<(unix.SIGKILL-1)) != 0 {
				t.Errorf("the guest's init has SIGKILL pending (%s %s) once the thread that powered it on ended", k, v)
			}
		}
	}
}

// TestPublishAndReach: an address of this machine reached from inside a
// guest (Reach, declared before the guest boots and before its loopback is
// up) and that guest port published on this machine's loopback (Publish)
// make one path: a connection to the published address reaches a server
// of this machine through the guest, and again after a power cycle.
func TestPublishAndReach(t *testing.T) {
	m := newTestManager(t)
	vm := testVM(t, 0)
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "host got %s", line)
			}()
		}
	}()
	const port = 4222
	r, err := m.Reach(vm.Key, port, srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	pub, err := m.Publish(vm.Key, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pub.Close)
	roundTrip := func() {
		t.Helper()
		// The probe, unlike an OS's init, leaves the loopback down.
		g, ok := m.Guest(vm.Key)
		if !ok {
			t.Fatal("the guest is not listed")
		}
		ns, err := netns.GetFromPid(g.PID)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		if err := segment.InNamespace(ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err == nil {
				err = netlink.LinkSetUp(lo)
			}
			return err
		}); err != nil {
			t.Fatalf("bring the guest's loopback up: %v", err)
		}
		c, err := net.DialTimeout("tcp", pub.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "ping\n")
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != "host got ping\n" {
			t.Fatalf("through the published port and the guest: %q, %v; want %q", got, err, "host got ping\n")
		}
	}
	if err := m.PowerOn(vm); err != nil {
		t.Fatal(err)
	}
	roundTrip()
	if err := m.PowerOff(vm.Key); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", pub.Addr, 5*time.Second); err == nil {
		// Accepted by the published port, then closed: no guest to reach.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, _ := c.Read(make([]byte, 1)); n != 0 {
			t.Error("a powered-off guest answered")
		}
		c.Close()
	}
	if err := m.PowerOn(vm); err != nil {
		t.Fatal(err)
	}
	roundTrip()
}

// TestBalanceSkipsGuestsThatDoNotAnswer: a balancer in front of two
// guests' port sends connections to both while both listen, to the one
// that still listens when the other's server stops or its VM is off,
// and follows a new list of VMs at the same address.
func TestBalanceSkipsGuestsThatDoNotAnswer(t *testing.T) {
	m := newTestManager(t)
	vms := []VM{testVM(t, 0), testVM(t, 1)}
	const port = 6443
	// serve listens at port in the VM's guest (loopback up, as an OS's
	// init would) and answers each connection with the VM's name.
	serve := func(vm VM) net.Listener {
		t.Helper()
		g, ok := m.Guest(vm.Key)
		if !ok {
			t.Fatalf("%s: the guest is not listed", vm.Name)
		}
		ns, err := netns.GetFromPid(g.PID)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		var ln net.Listener
		if err := segment.InNamespace(ns, func() error {
			lo, err := netlink.LinkByName("lo")
			if err == nil {
				err = netlink.LinkSetUp(lo)
			}
			if err == nil {
				ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			}
			return err
		}); err != nil {
			t.Fatalf("%s: listen in the guest: %v", vm.Name, err)
		}
		servetest.Accept(t, ln, func(c net.Conn) {
			fmt.Fprintf(c, "%s\n", vm.Name)
			c.Close()
		})
		return ln
	}
	lns := map[string]net.Listener{}
	for _, vm := range vms {
		if err := m.PowerOn(vm); err != nil {
			t.Fatal(err)
		}
		lns[vm.Name] = serve(vm)
	}
	b, err := m.Balance([]string{vms[0].Name, vms[1].Name}, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	// answers makes n connections and counts who answered ("" for a
	// connection closed unanswered).
	answers := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			c, err := net.DialTimeout("tcp", b.Addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			got[strings.TrimSpace(line)]++
		}
		return got
	}
	if got := answers(4); got["pv-0"] != 2 || got["pv-1"] != 2 {
		t.Errorf("both guests listen: answers %v, want 2 each", got)
	}
	lns["pv-0"].Close()
	if got := answers(4); got["pv-1"] != 4 {
		t.Errorf("pv-0's server stopped: answers %v, want all from pv-1", got)
	}
	if err := m.PowerOff(vms[1].Key); err != nil {
		t.Fatal(err)
	}
	lns["pv-0"] = serve(vms[0])
	if got := answers(3); got["pv-0"] != 3 {
		t.Errorf("pv-1 off: answers %v, want all from pv-0", got)
	}
	b.Set([]string{vms[1].Name})
	if got := answers(2); got[""] != 2 {
		t.Errorf("only pv-1, which is off: answers %v, want connections closed unanswered", got)
	}
}

// TestPublishAtKeepsAFreeAddress: a port published again (by a process
// started anew, whose clients hold the old address) gets the address it
// had where that is free; where it is taken, or is no loopback address of
// this machine, another on the loopback.
func TestPublishAtKeepsAFreeAddress(t *testing.T) {
	m := newTestManager(t)
	first, err := m.Publish("vm-a", 6443)
	if err != nil {
		t.Fatal(err)
	}
	addr := first.Addr
	first.Close()
	again, err := m.PublishAt("vm-a", 6443, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Addr != addr {
		t.Fatalf("published again at %s, want the free address it had, %s", again.Addr, addr)
	}
	onLoopback := func(what, got, not string) {
		t.Helper()
		host, _, err := net.SplitHostPort(got)
		if err != nil || !net.ParseIP(host).IsLoopback() || got == not {
			t.Fatalf("%s at %s: want another address of the loopback than %s", what, got, not)
		}
	}
	taken, err := m.PublishAt("vm-b", 6443, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	onLoopback("published where the address is taken", taken.Addr, addr)
	b, err := m.BalanceAt([]string{"vm-a"}, 6443, "192.0.2.1:6443")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	onLoopback("balanced at an address not of the loopback", b.Addr, "192.0.2.1:6443")
}
