package source

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podvisor/podvisor/agent/privtest"
)

func TestParseInfoGet(t *testing.T) {
	if v, err := parseInfoGet("k", `1 {"version":1}`); err != nil || v != `{"version":1}` {
		t.Fatalf("value = %q, %v", v, err)
	}
	if v, err := parseInfoGet("k", "1"); err != nil || v != "" {
		t.Fatalf("empty value = %q, %v", v, err)
	}
	if _, err := parseInfoGet("k", "0 No value found"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "No value found") {
		t.Fatalf("unset key: err = %v", err)
	}
	if _, err := parseInfoGet("k", "garbage"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("garbage reply: err = %v", err)
	}
}

// On a machine that is not a VMware VM the backdoor probe must say
// "unavailable" (and not fault): the pod VM's init then falls back to the
// configuration disk. The QEMU boot test covers a hypervisor whose vmport
// answers the version query but not the RPC channel.
func TestGuestinfoUnavailableHere(t *testing.T) {
	privtest.Require(t, "I/O port access")
	b, _ := os.ReadFile("/sys/class/dmi/id/sys_vendor")
	if strings.Contains(string(b), "VMware") {
		t.Skip("this machine is a VMware VM: the backdoor is really there")
	}
	_, err := Guestinfo()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
	t.Log(err)
}

// fakeVMware stands for the backdoor of a VMware VM whose guestinfo holds
// values, and checks that every trap runs on a thread that was granted I/O
// port access: the privilege is a thread's, and a trap elsewhere faults on
// a hypervisor that does not forgive it.
type fakeVMware struct {
	values map[string]string

	mu      sync.Mutex
	granted map[int]bool // thread ids
	faults  []string     // traps on a thread never granted

	request     []byte
	reply       string
	replyOffset int
}

func (f *fakeVMware) install(t *testing.T) {
	oldBackdoor, oldEnable := backdoor, enablePorts
	t.Cleanup(func() { backdoor, enablePorts = oldBackdoor, oldEnable })
	f.granted = map[int]bool{}
	enablePorts = func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.granted[unix.Gettid()] = true
		return nil
	}
	backdoor = f.trap
}

func (f *fakeVMware) trap(in regs) regs {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tid := unix.Gettid(); !f.granted[tid] {
		f.faults = append(f.faults, fmt.Sprintf("command %#x on thread %d", in.cx, tid))
	}
	ok := regs{cx: statusSuccess << 16}
	switch cmd, sub := in.cx&0xffff, in.cx>>16; {
	case cmd == bdoorGetVersion:
		return regs{bx: bdoorMagic}
	case cmd != bdoorMessage:
		return regs{}
	case sub == msgOpen:
		f.request, f.reply, f.replyOffset = nil, "", 0
		return regs{cx: statusSuccess << 16, dx: 1 << 16}
	case sub == msgSendPayload:
		for j := 0; j < 4; j++ {
			f.request = append(f.request, byte(in.bx>>(8*j)))
		}
		return ok
	case sub == msgRecvSize:
		key := strings.TrimPrefix(strings.TrimRight(string(f.request), "\x00"), "info-get ")
		f.reply = "0 No value found"
		if v, found := f.values[key]; found {
			f.reply = "1 " + v
		}
		return regs{cx: (statusSuccess | statusDoRecv) << 16, bx: uint32(len(f.reply))}
	case sub == msgRecvPayload:
		var word uint32
		for j := 0; j < 4 && f.replyOffset < len(f.reply); j++ {
			word |= uint32(f.reply[f.replyOffset]) << (8 * j)
			f.replyOffset++
		}
		return regs{cx: statusSuccess << 16, bx: word}
	default: // send size, receive status, close
		return ok
	}
}

// Guestinfo read from a goroutine on another thread than the one that
// opened it (the agent's watcher, its channel's hook) traps only on
// threads that have I/O port access.
func TestGuestinfoTrapsOnlyOnThreadsWithPortAccess(t *testing.T) {
	f := &fakeVMware{values: map[string]string{"guestinfo.podvisor.spec": `{"uid":"u1"}`}}
	f.install(t)
	opened := make(chan Source)
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		// Locked and kept: no other goroutine runs on this thread while
		// the test reads.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		g, err := Guestinfo()
		if err != nil {
			t.Error(err)
		}
		opened <- g
		<-hold
	}()
	g := <-opened
	if g == nil {
		t.FailNow()
	}
	read := make(chan error)
	go func() {
		runtime.LockOSThread() // another thread than the opener's
		defer runtime.UnlockOSThread()
		v, err := g.Get("guestinfo.podvisor.spec")
		if err == nil && v != `{"uid":"u1"}` {
			err = fmt.Errorf("value %q", v)
		}
		read <- err
	}()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.faults) > 0 {
		t.Fatalf("traps on threads without I/O port access: %v", f.faults)
	}
}
