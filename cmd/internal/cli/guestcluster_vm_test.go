package cli

import (
	"crypto/tls"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/pki"
	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestControlPlaneVMRunsTheAPIServer is the guest cluster control plane in
// a native VM (docs/architecture.md, "Departures"): `up` seeds the
// control-plane image (podvisor-guest, linked static, on the sample OS)
// and declares it; a VM of it declared as the guest cluster controller
// declares one (guestcluster.ControlPlaneVM, user data from
// guestcluster.ControlPlaneUserData with a CA minted here) boots, and its
// guest runs kube-apiserver and etcd on its data disk: /readyz answers on
// the guest's port 6443, published on this machine's loopback by the
// simulated hypervisor, to a certificate of that CA, and a ConfigMap
// written before a power cycle is there after it, through the same
// published port.
func TestControlPlaneVMRunsTheAPIServer(t *testing.T) {
	guestBin := guestBinary(t)
	if f, err := elf.Open(guestBin); err != nil {
		t.Fatal(err)
	} else if f.Close(); slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
		t.Fatalf("%s is linked dynamically: `make guest` builds it static, as a VM's root has no C library", guestBin)
	}
	settings := config.Layered(config.Map(map[string]string{"PODVISOR_GUESTCLUSTER_BINARY": guestBin}), config.Env())
	sys, dir := guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{Settings: settings})
	if out, errOut, code := run(t, dir, "apiVersion: podvisor.io/v1alpha1\nkind: VirtualMachineClass\nmetadata: {name: small}\nspec: {cpus: 2, memory: 4Gi}\n",
		"apply", "-f", "-"); code != 0 {
		t.Fatalf("apply the class: %d %s %s", code, out, errOut)
	}
	ctx := t.Context()
	want := sys.Endpoints.Registry + "/" + guestcluster.ControlPlaneImageRepoTag
	waitFor(t, "the control-plane image declared by up", 2*time.Minute, func() bool {
		out, _, code := run(t, dir, "", "get", "vmimage", guestcluster.ControlPlaneImage, "-o", "json")
		return code == 0 && strings.Contains(out, want)
	})

	// What the controller will hand the VM: the cluster's CA, kept on the
	// supervisor's side, and the guest cluster's NATS identity.
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	auth, err := bus.LoadAuthority(filepath.Join(dir, "nats-auth"))
	if err != nil {
		t.Fatal(err)
	}
	credsPath, err := auth.MintGuest("team-a", "cpvm")
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ud, err := guestcluster.ControlPlaneUserData(guestcluster.ControlPlaneBoot{
		Namespace: "team-a", Name: "cpvm", Version: "v1.37.2",
		CACert: read(ca.CAFile()), CAKey: read(filepath.Join(filepath.Dir(ca.CAFile()), "ca-key.pem")),
		NATSURL: sys.Endpoints.NATSURL, NATSCreds: read(credsPath), NATSCA: read(sys.Endpoints.NATSCA),
	})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(power string) {
		t.Helper()
		vm := guestcluster.ControlPlaneVM("team-a", "cpvm", "small", events.DefaultNetwork, "1Gi", 0, ud)
		vm.Spec.PowerState = power
		b, _ := json.Marshal(vm)
		if out, errOut, code := run(t, dir, string(b), "apply", "-f", "-"); code != 0 {
			t.Fatalf("apply the control-plane VM %s: %d %s %s", power, code, out, errOut)
		}
	}
	const name = "cpvm-control-plane-0"
	var key string // the VM's key in vCenter (its guest's)
	getVM := func() events.VirtualMachine {
		out, _, _ := run(t, dir, "", "get", "vm", name, "-n", "team-a", "-o", "json")
		var v events.VirtualMachine
		_ = json.Unmarshal([]byte(out), &v)
		if v.Status == nil {
			v.Status = &events.VirtualMachineStatus{}
		}
		return v
	}
	certFile, keyFile, err := ca.IssueAs("admin", []string{"system:masters"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	c := simtest.Client(t, sys.Datacenter)
	// The API server's port, published on this machine's loopback by the
	// simulated hypervisor: the path from the supervisor into the guest,
	// the same VM's guest after each boot.
	var published *guest.Published
	// boot waits for the VM's guest to run and returns an HTTPS client of
	// the published API port.
	boot := func() *http.Client {
		t.Helper()
		var vm events.VirtualMachine
		waitFor(t, name+" PoweredOn on a host", 3*time.Minute, func() bool {
			vm = getVM()
			return vm.Status.PowerState == events.PowerStatePoweredOn && vm.Status.Host != ""
		})
		ref, err := find.NewFinder(c.Client, true).VirtualMachine(ctx, "/*/vm/podvisor-vms/team-a/"+events.NativeVMName(vm.Status.UID))
		if err != nil {
			t.Fatalf("vCenter has no VM for %s: %v", name, err)
		}
		key = ref.Reference().Value
		waitFor(t, name+"'s native guest", time.Minute, func() bool {
			g, ok := sys.Datacenter.Guests().Guest(key)
			return ok && g.VM.Native != nil
		})
		if published == nil {
			if published, err = sys.Datacenter.Guests().Publish(key, guestcluster.ControlPlaneAPIPort); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(published.Close)
		}
		tr := &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}, ServerName: "127.0.0.1"},
		}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	api := func(hc *http.Client, method, path, body string) (int, string) {
		req, err := http.NewRequestWithContext(ctx, method, "https://"+published.Addr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// guestFile reads a file of the running guest's root.
	guestFile := func(path string) string {
		g, ok := sys.Datacenter.Guests().Guest(key)
		if !ok {
			return "(no guest)"
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s", g.PID, path))
		if err != nil {
			return err.Error()
		}
		if len(b) > 3000 {
			b = b[len(b)-3000:]
		}
		return string(b)
	}
	ready := func(hc *http.Client) {
		t.Helper()
		var last string
		deadline := time.Now().Add(3 * time.Minute)
		for {
			code, body := api(hc, http.MethodGet, "/readyz", "")
			if code == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", code, body)
			if time.Now().After(deadline) {
				g, _ := sys.Datacenter.Guests().Guest(key)
				console, _ := os.ReadFile(filepath.Join(g.Dir, "console.log"))
				t.Fatalf("the guest's API server is not ready: %s\nconsole.log:\n%s\nuser-data.log:\n%s\nguest.log:\n%s", last, console,
					guestFile("/var/lib/cloud/instance/user-data.log"), guestFile(guestcluster.ControlPlaneDataDir+"/guest.log"))
			}
			time.Sleep(time.Second)
		}
	}
	apply(events.PowerStatePoweredOn)
	hc := boot()
	ready(hc)
	// etcd's data is on the VM's data disk (sdb), which the user data
	// formatted and mounted.
	if g, ok := sys.Datacenter.Guests().Guest(key); !ok {
		t.Errorf("%s's guest is gone", name)
	} else if mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mounts", g.PID)); err != nil || !strings.Contains(string(mounts), "/dev/sdb "+guestcluster.ControlPlaneDataDir+" ") {
		t.Errorf("the guest's mounts (%v):\n%s\nwant /dev/sdb on %s", err, mounts, guestcluster.ControlPlaneDataDir)
	}
	if code, body := api(hc, http.MethodPost, "/api/v1/namespaces/default/configmaps",
		`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kept"},"data":{"a":"b"}}`); code != http.StatusCreated {
		t.Fatalf("create a ConfigMap: %d %s", code, body)
	}

	// A power cycle: the guest boots again, the user data mounts the same
	// disk, and the cluster is the one it was.
	apply(events.PowerStatePoweredOff)
	waitFor(t, name+" PoweredOff", time.Minute, func() bool {
		return getVM().Status.PowerState == events.PowerStatePoweredOff
	})
	apply(events.PowerStatePoweredOn)
	hc = boot()
	ready(hc)
	if code, body := api(hc, http.MethodGet, "/api/v1/namespaces/default/configmaps/kept", ""); code != http.StatusOK || !strings.Contains(body, `"a":"b"`) {
		t.Errorf("the ConfigMap after a power cycle: %d %s", code, body)
	}
	if out, errOut, code := run(t, dir, "", "delete", "vm", name, "-n", "team-a"); code != 0 {
		t.Errorf("delete vm: %d %s %s", code, out, errOut)
	}
}
