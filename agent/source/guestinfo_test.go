package source

import (
	"errors"
	"os"
	"strings"
	"testing"

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
