package source

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// The VMware backdoor: an IN from I/O port 0x5658 with the magic in EAX
// traps to the hypervisor, which answers in the registers. Guestinfo is
// read over its RPC channel ("RPCI" protocol, command 0x1e), four bytes per
// trap, as open-vm-tools' rpcout does.
const (
	bdoorMagic      = 0x564D5868
	bdoorPort       = 0x5658
	bdoorGetVersion = 10
	bdoorMessage    = 0x1e
	rpciProtocol    = 0x49435052

	msgOpen        = 0
	msgSendSize    = 1
	msgSendPayload = 2
	msgRecvSize    = 3
	msgRecvPayload = 4
	msgRecvStatus  = 5
	msgClose       = 6

	statusSuccess = 0x0001
	statusDoRecv  = 0x0002
)

// regs are the registers of one backdoor call, in and out.
type regs struct{ ax, bx, cx, dx, si, di uint32 }

// backdoor is the trap itself (bdoor_amd64.s); nil where there is none.
var backdoor func(regs) regs

// enablePorts grants the calling thread I/O port access (iopl 3): on
// VMware the backdoor port answers user mode anyway, but elsewhere an IN
// without it faults, so detection needs it to be safe. Linux keeps the
// privilege per thread, not per process, so it is asked for on the very
// thread that traps (portThread).
var enablePorts func() error

// portThread locks the calling goroutine to its OS thread and gives that
// thread I/O port access, for the traps made until unlock: the Go
// scheduler would otherwise move the goroutine between the grant and a
// trap, or between two traps, to a thread never granted it. (The thread
// keeps the privilege once unlocked: the agent, PID 1, has it anyway.)
func portThread() (unlock func(), err error) {
	runtime.LockOSThread()
	if err := enablePorts(); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	return runtime.UnlockOSThread, nil
}

var rpcMu sync.Mutex

// Guestinfo opens the VM's guestinfo through the VMware backdoor. It
// returns ErrUnavailable on other hypervisors (and on QEMU, whose vmport
// answers the version query but not the RPC channel).
func Guestinfo() (Source, error) {
	if backdoor == nil {
		return nil, fmt.Errorf("guestinfo backdoor: %w: not on this architecture", ErrUnavailable)
	}
	unlock, err := portThread()
	if err != nil {
		return nil, fmt.Errorf("guestinfo backdoor: %w: no I/O port access: %w", ErrUnavailable, err)
	}
	out := backdoor(regs{ax: bdoorMagic, bx: ^uint32(0), cx: bdoorGetVersion, dx: bdoorPort})
	unlock()
	if out.bx != bdoorMagic {
		return nil, fmt.Errorf("guestinfo backdoor: %w: not a VMware virtual machine", ErrUnavailable)
	}
	g := backdoorSource{}
	// A harmless query proves the RPC channel works.
	if _, err := g.rpc("info-get guestinfo.podvisor.probe"); err != nil {
		return nil, fmt.Errorf("guestinfo backdoor: %w: %w", ErrUnavailable, err)
	}
	return g, nil
}

type backdoorSource struct{}

func (backdoorSource) Name() string { return "guestinfo (VMware backdoor)" }

// Watch implements Watched: every Get reads the hypervisor's value anew.
func (backdoorSource) Watch() string { return guestchannel.WatchGuestinfo }

// Get implements Source with "info-get <key>": the reply is "1 <value>",
// or "0 No value found".
func (g backdoorSource) Get(key string) (string, error) {
	reply, err := g.rpc("info-get " + key)
	if err != nil {
		return "", fmt.Errorf("guestinfo %s: %w", key, err)
	}
	return parseInfoGet(key, reply)
}

func parseInfoGet(key, reply string) (string, error) {
	switch {
	case strings.HasPrefix(reply, "1 "):
		return reply[2:], nil
	case reply == "1":
		return "", nil
	case strings.HasPrefix(reply, "0"):
		return "", fmt.Errorf("guestinfo %s: %w (%s)", key, ErrNotFound, strings.TrimSpace(strings.TrimPrefix(reply, "0")))
	default:
		return "", fmt.Errorf("guestinfo %s: unexpected reply %q", key, reply)
	}
}

// rpc sends one request over a fresh RPCI channel and returns the reply,
// every trap on one thread with I/O port access (portThread): the caller
// may be any goroutine (the agent's watcher, its channel's).
func (backdoorSource) rpc(request string) (string, error) {
	rpcMu.Lock()
	defer rpcMu.Unlock()
	unlock, err := portThread()
	if err != nil {
		return "", fmt.Errorf("no I/O port access: %w", err)
	}
	defer unlock()
	call := func(sub uint32, bx uint32, ch uint32) regs {
		return backdoor(regs{ax: bdoorMagic, bx: bx, cx: bdoorMessage | sub<<16, dx: ch<<16 | bdoorPort})
	}
	ok := func(r regs) bool { return (r.cx>>16)&statusSuccess != 0 }

	r := call(msgOpen, rpciProtocol, 0)
	if !ok(r) {
		return "", errors.New("the RPC channel does not open")
	}
	ch := r.dx >> 16
	defer call(msgClose, 0, ch)

	if !ok(call(msgSendSize, uint32(len(request)), ch)) {
		return "", errors.New("RPC send size refused")
	}
	for i := 0; i < len(request); i += 4 {
		var word uint32
		for j := 0; j < 4 && i+j < len(request); j++ {
			word |= uint32(request[i+j]) << (8 * j)
		}
		if !ok(call(msgSendPayload, word, ch)) {
			return "", errors.New("RPC send refused")
		}
	}
	r = call(msgRecvSize, 0, ch)
	if !ok(r) || (r.cx>>16)&statusDoRecv == 0 {
		return "", errors.New("RPC sent no reply")
	}
	size := int(r.bx)
	if size > 1<<20 {
		return "", fmt.Errorf("RPC reply of %d bytes is too large", size)
	}
	reply := make([]byte, 0, size)
	for len(reply) < size {
		r = call(msgRecvPayload, statusSuccess, ch)
		if !ok(r) {
			return "", errors.New("RPC receive refused")
		}
		for j := 0; j < 4 && len(reply) < size; j++ {
			reply = append(reply, byte(r.bx>>(8*j)))
		}
	}
	if !ok(call(msgRecvStatus, statusSuccess, ch)) {
		return "", errors.New("RPC receive status refused")
	}
	return string(reply), nil
}
