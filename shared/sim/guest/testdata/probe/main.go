// Command probe stands in for the pod VM agent in the simulated guest's own
// tests: run as PID 1 of a guest, it reports what the guest sees (its pid,
// cgroups, devices) to probe.json in its state dir, starts a child that
// must die with the guest, and speaks the first messages of the guest
// channel (hello, full status; stopped for a stop) on every connection.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
)

// Report is what the probe writes.
type Report struct {
	PID      int              `json:"pid"`
	Cgroups  string           `json:"cgroups"`
	Devices  map[string]int64 `json:"devices"`
	ChildPID int              `json:"childPID"`
	PodUID   string           `json:"podUID"`
}

func main() {
	bootPath := flag.String("boot-config", "", "boot config")
	flag.Parse()
	data, err := os.ReadFile(*bootPath)
	if err != nil {
		panic(err)
	}
	var boot guestchannel.BootConfig
	if err := json.Unmarshal(data, &boot); err != nil {
		panic(err)
	}
	spec, err := guestchannel.UnmarshalSpec(boot.Spec)
	if err != nil {
		panic(err)
	}
	cg, _ := os.ReadFile("/proc/self/cgroup")
	r := Report{PID: os.Getpid(), Cgroups: string(cg), Devices: map[string]int64{}, PodUID: spec.UID}
	for unit, p := range boot.Devices {
		r.Devices[unit] = -1
		if fi, err := os.Stat(p); err == nil {
			r.Devices[unit] = fi.Size()
		}
	}
	child := exec.Command("/bin/sleep", "3600")
	if err := child.Start(); err == nil {
		r.ChildPID = child.Process.Pid
	}
	out, _ := json.Marshal(r)
	tmp := filepath.Join(boot.StateDir, "probe.json.tmp")
	_ = os.WriteFile(tmp, out, 0o600)
	_ = os.Rename(tmp, filepath.Join(boot.StateDir, "probe.json"))

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		_ = os.WriteFile(filepath.Join(boot.StateDir, "sigterm"), nil, 0o600)
		os.Exit(0)
	}()

	b := make([]byte, 8)
	_, _ = rand.Read(b)
	bootID := hex.EncodeToString(b)
	addr := strings.TrimPrefix(boot.Channel, "unix:")
	for {
		c, err := net.Dial("unix", addr)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		serve(guestchannel.NewConn(c), spec.UID, boot.VMUUID, bootID)
		time.Sleep(20 * time.Millisecond)
	}
}

func serve(c *guestchannel.Conn, uid, vmUUID, bootID string) {
	defer c.Close()
	if c.Send(guestchannel.TypeHello, "", guestchannel.Hello{Protocol: guestchannel.Protocol, PodUID: uid, VMUUID: vmUUID, BootID: bootID}) != nil {
		return
	}
	if c.Send(guestchannel.TypeStatus, "", guestchannel.Status{Full: true, Seq: 1, Phase: guestchannel.PhasePending}) != nil {
		return
	}
	for {
		env, err := c.Receive()
		if err != nil {
			return
		}
		switch env.Type {
		case guestchannel.TypeStop:
			_ = c.Send(guestchannel.TypeStopped, env.ID, guestchannel.Stopped{})
		default:
			_ = c.Send(guestchannel.TypeError, env.ID, guestchannel.Error{Message: "probe: " + env.Type + " is not served"})
		}
	}
}
