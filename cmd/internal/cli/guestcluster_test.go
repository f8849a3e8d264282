package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/find"

	"github.com/podvisor/podvisor/agent/privtest"
	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/config"
	"github.com/podvisor/podvisor/shared/ociregistry"
	"github.com/podvisor/podvisor/shared/simtest"
)

// TestGuestClusterRunsPodsAsPodVMs is the guest cluster as a user meets it
// on `podvisor up` with guests: apply a GuestCluster, take its kubeconfig
// from `get guestcluster --kubeconfig` as the admin, and with kubectl see the podvisor
// node and one Ready worker node per worker VM, served from that VM
// (scaled to two and back to one by re-applying, the removed worker's VM
// deleted; NotReady while its VM is off), bind pods by their
// nodeSelector (to the worker node; Pending and Unschedulable while no node
// matches), run a busybox pod that becomes a Running pod VM in the guest
// cluster's namespace of the supervisor, read its log and the worker
// pod's (through the worker VM's kubelet API); deleting the guest
// cluster deletes the pod and its VM.
func TestGuestClusterRunsPodsAsPodVMs(t *testing.T) {
	sys, dir := guestClustersUp(t, 2)
	ctx := t.Context()

	// The worker VMs' class; their image is the default node image `up`
	// declares (the sample OS of the seeded registry).
	catalog := `apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 2, memory: 4Gi}
`
	if out, errOut, code := run(t, dir, catalog, "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply the class: %d %s %s", code, out, errOut)
	}
	gc := func(workers int) string {
		return fmt.Sprintf(`apiVersion: podvisor.io/v1alpha1
kind: GuestCluster
metadata: {name: gc1, namespace: team-a}
spec: {version: v1.37.2, controlPlane: {replicas: 1, className: small}, workers: {replicas: %d, className: small}}
`, workers)
	}
	if out, errOut, code := run(t, dir, gc(1), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	kubectl := guestKubectl(t, dir, "gc1", 3*time.Minute)
	if out, err := kubectl("get", "nodes", "-o", "name"); err != nil || !strings.Contains(out, "node/podvisor") {
		t.Fatalf("kubectl get nodes: %v\n%s", err, out)
	}
	if out, err := kubectl("wait", "--for=condition=Ready", "node/podvisor", "--timeout=20s"); err != nil {
		t.Fatalf("node podvisor not Ready: %v\n%s", err, out)
	}

	// Worker nodes: one per worker VM, Ready while it runs; re-applying
	// with another count adds or removes VMs and nodes.
	readyWorkers := func() int {
		out, _, code := run(t, dir, "", "get", "guestcluster", "gc1", "-n", "team-a", "-o", "json")
		var r struct{ ReadyWorkers int }
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil {
			return -1
		}
		return r.ReadyWorkers
	}
	workerNodes := func(want ...string) {
		t.Helper()
		waitFor(t, fmt.Sprintf("worker nodes %v Ready, and no other", want), 3*time.Minute, func() bool {
			out, err := kubectl("get", "nodes", "-l", "podvisor.io/worker",
				"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}`)
			if err != nil {
				return false
			}
			var got []string
			for _, f := range strings.Fields(out) {
				name, status, _ := strings.Cut(f, "=")
				if status != "True" {
					return false
				}
				got = append(got, name)
			}
			return slices.Equal(got, want) && readyWorkers() == len(want)
		})
	}
	workerNodes("gc1-worker-0")
	getVM := func(name string) events.VirtualMachine { return teamVM(t, dir, name) }
	if ps := getVM("gc1-worker-0").Status.PowerState; ps != events.PowerStatePoweredOn {
		t.Errorf("worker VM gc1-worker-0: power state %q, want PoweredOn", ps)
	}
	// The control plane runs in its VM: the API server kubectl talks to
	// is the one of that VM's guest, whose podvisor-guest keeps its ready
	// file on the VM's data disk.
	cpVM := getVM("gc1-control-plane-0")
	if cpVM.Status.PowerState != events.PowerStatePoweredOn || cpVM.Status.Host == "" {
		t.Errorf("control-plane VM gc1-control-plane-0: %q on %q, want PoweredOn on a host", cpVM.Status.PowerState, cpVM.Status.Host)
	} else if key, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(cpVM.Status.UID)); !ok {
		t.Errorf("control-plane VM gc1-control-plane-0 runs no guest")
	} else if g, _ := sys.Datacenter.Guests().Guest(key); g.VM.Native == nil {
		t.Errorf("control-plane VM gc1-control-plane-0 runs no native guest")
	} else if _, err := os.Stat(fmt.Sprintf("/proc/%d/root%s/%s", g.PID, guestcluster.ControlPlaneDataDir, guestcluster.ReadyFile)); err != nil {
		t.Errorf("the control-plane VM's podvisor-guest is not ready in its guest: %v", err)
	} else if _, err := os.Stat(fmt.Sprintf("/proc/%d/root%s/pki/ca-key.pem", g.PID, guestcluster.ControlPlaneDataDir)); !os.IsNotExist(err) {
		t.Errorf("the control-plane VM's guest has the cluster's CA key (%v): want only the certificates signed for it", err)
	}
	// The worker node is served from its worker VM: the VM boots the
	// control-plane image (it holds podvisor-guest), its user data runs
	// `podvisor-guest node` in its guest, and the guest holds what was
	// signed for that node, never the cluster's CA key.
	worker := getVM("gc1-worker-0")
	if worker.Spec.ImageName != guestcluster.ControlPlaneImage {
		t.Errorf("worker VM gc1-worker-0: image %q, want %q", worker.Spec.ImageName, guestcluster.ControlPlaneImage)
	}
	workerGuest := func(vm events.VirtualMachine) (int, bool) {
		key, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(vm.Status.UID))
		if !ok {
			return 0, false
		}
		g, ok := sys.Datacenter.Guests().Guest(key)
		return g.PID, ok && g.VM.Native != nil
	}
	if pid, ok := workerGuest(worker); !ok {
		t.Errorf("worker VM gc1-worker-0 runs no native guest")
	} else {
		root := fmt.Sprintf("/proc/%d/root%s", pid, guestcluster.WorkerDataDir)
		if b, err := os.ReadFile(root + "/node.log"); err != nil || !strings.Contains(string(b), "worker node started") {
			t.Errorf("the worker VM's guest runs no worker node (%v):\n%s", err, b)
		}
		if _, err := os.Stat(root + "/pki/kubelet.pem"); err != nil {
			t.Errorf("the worker VM's kubelet certificate: %v", err)
		}
		if _, err := os.Stat(root + "/pki/ca-key.pem"); !os.IsNotExist(err) {
			t.Errorf("the worker VM's guest has the CA key (%v); want only its own certificates", err)
		}
	}
	if strings.Contains(worker.Spec.UserData, "PRIVATE KEY") && strings.Contains(worker.Spec.UserData, "ca-key") {
		t.Errorf("the worker VM's user data carries the CA key")
	}
	if out, errOut, code := run(t, dir, gc(2), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply 2 workers: %d %s %s", code, out, errOut)
	}
	workerNodes("gc1-worker-0", "gc1-worker-1")
	if out, errOut, code := run(t, dir, gc(1), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply 1 worker: %d %s %s", code, out, errOut)
	}
	workerNodes("gc1-worker-0")
	waitFor(t, "worker VM gc1-worker-1 deleted", 2*time.Minute, func() bool {
		_, _, code := run(t, dir, "", "get", "vm", "gc1-worker-1", "-n", "team-a")
		return code != 0
	})

	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	// Node selectors: one naming the worker nodes' label binds to the
	// worker; one no node matches stays Pending with kube-scheduler's
	// reason, and binds once a node is labelled to match.
	runSelecting := func(name, selector string) {
		t.Helper()
		if out, err := kubectl("run", name, "--image="+image, "--restart=Never",
			`--overrides={"apiVersion":"v1","spec":{"nodeSelector":`+selector+`}}`, "--", "sh", "-c", "echo hello from "+name+"; sleep 3600"); err != nil {
			t.Fatalf("kubectl run %s: %v\n%s", name, err, out)
		}
	}
	runSelecting("on-worker", `{"podvisor.io/worker":"small"}`)
	runSelecting("ssd", `{"disk":"ssd"}`)
	waitFor(t, "pod on-worker bound to gc1-worker-0 and Running", 2*time.Minute, func() bool {
		out, err := kubectl("get", "pod", "on-worker", "-o", "jsonpath={.spec.nodeName} {.status.phase}")
		return err == nil && out == "gc1-worker-0 Running"
	})
	waitFor(t, "pod ssd Pending, Unschedulable", 30*time.Second, func() bool {
		out, err := kubectl("get", "pod", "ssd", "-o",
			`jsonpath={.spec.nodeName}|{.status.phase}|{.status.conditions[?(@.type=="PodScheduled")].reason}|{.status.conditions[?(@.type=="PodScheduled")].message}`)
		return err == nil && strings.HasPrefix(out, "|Pending|Unschedulable|") && strings.Contains(out, "didn't match Pod's node affinity/selector")
	})
	if out, err := kubectl("label", "node", "gc1-worker-0", "disk=ssd"); err != nil {
		t.Fatalf("kubectl label node: %v\n%s", err, out)
	}
	waitFor(t, "pod ssd bound to gc1-worker-0 once it is labelled", 30*time.Second, func() bool {
		out, err := kubectl("get", "pod", "ssd", "-o", "jsonpath={.spec.nodeName}")
		return err == nil && out == "gc1-worker-0"
	})
	if out, err := kubectl("run", "bb", "--image="+image, "--restart=Never", "--", "sh", "-c", "echo hello from the guest cluster; sleep 3600"); err != nil {
		t.Fatalf("kubectl run: %v\n%s", err, out)
	}
	// The supervisor runs it as a pod VM in the guest cluster's namespace.
	var uid string
	waitFor(t, "pod team-a/gc1-default-bb Running on the supervisor", 2*time.Minute, func() bool {
		out, _, code := run(t, dir, "", "get", "pod", "gc1-default-bb", "-n", "team-a", "-o", "json")
		var p struct {
			Metadata struct{ UID string }
			Status   struct{ Phase string }
		}
		if code != 0 || json.Unmarshal([]byte(out), &p) != nil {
			return false
		}
		uid = p.Metadata.UID
		return p.Status.Phase == "Running"
	})
	waitFor(t, "guest pod bb Running", time.Minute, func() bool {
		out, err := kubectl("get", "pod", "bb", "-o", "jsonpath={.status.phase}")
		return err == nil && out == "Running"
	})
	waitFor(t, "kubectl logs bb", time.Minute, func() bool {
		out, err := kubectl("logs", "bb")
		return err == nil && strings.Contains(out, "hello from the guest cluster")
	})
	// The worker's pod: its log comes through the worker VM's kubelet API,
	// which the API server reaches in the control-plane VM's guest.
	waitFor(t, "kubectl logs on-worker", time.Minute, func() bool {
		out, err := kubectl("logs", "on-worker")
		return err == nil && strings.Contains(out, "hello from on-worker")
	})
	// A worker VM powered off makes its node NotReady (its kubelet went
	// with it); powered on again, its node is Ready again.
	powerWorker := func(state string) { t.Helper(); powerTeamVM(t, dir, "gc1-worker-0", state) }
	nodeReady := func(want string) func() bool {
		return func() bool {
			out, err := kubectl("get", "node", "gc1-worker-0", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
			return err == nil && out == want
		}
	}
	powerWorker(events.PowerStatePoweredOff)
	waitFor(t, "node gc1-worker-0 NotReady once its VM is off", 2*time.Minute, nodeReady("False"))
	powerWorker(events.PowerStatePoweredOn)
	waitFor(t, "node gc1-worker-0 Ready once its VM runs again", 3*time.Minute, nodeReady("True"))
	waitFor(t, "kubectl logs on-worker after the worker VM's power cycle", time.Minute, func() bool {
		out, err := kubectl("logs", "on-worker")
		return err == nil && strings.Contains(out, "hello from on-worker")
	})
	// A worker VM that runs but whose node has gone silent (its guest
	// frozen: the node stops renewing its Lease) is Unknown after the
	// Lease's 40 s, as the node lifecycle controller marks it, and Ready
	// again once its node speaks.
	key, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(getVM("gc1-worker-0").Status.UID))
	if !ok {
		t.Fatal("worker VM gc1-worker-0 runs no guest after its power cycle")
	}
	resume, err := sys.Datacenter.Guests().Pause(key)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node gc1-worker-0 Unknown (NodeStatusUnknown) while its guest is frozen", 2*time.Minute, func() bool {
		out, err := kubectl("get", "node", "gc1-worker-0", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason}`)
		return err == nil && out == "Unknown NodeStatusUnknown"
	})
	resume()
	waitFor(t, "node gc1-worker-0 Ready once its guest runs again", 3*time.Minute, nodeReady("True"))

	// Deleting the guest cluster deletes its pod and the pod's VM.
	if out, errOut, code := run(t, dir, "", "delete", "guestcluster", "gc1", "-n", "team-a"); code != 0 {
		t.Fatalf("delete guestcluster: %d %s %s", code, out, errOut)
	}
	waitFor(t, "the guest cluster, its pod, its worker and control-plane VMs gone", 2*time.Minute, func() bool {
		_, _, podCode := run(t, dir, "", "get", "pod", "gc1-default-bb", "-n", "team-a")
		_, _, gcCode := run(t, dir, "", "get", "guestcluster", "gc1", "-n", "team-a")
		_, _, vmCode := run(t, dir, "", "get", "vm", "gc1-worker-0", "-n", "team-a")
		_, _, cpCode := run(t, dir, "", "get", "vm", "gc1-control-plane-0", "-n", "team-a")
		return podCode != 0 && gcCode != 0 && vmCode != 0 && cpCode != 0
	})
	finder := find.NewFinder(simtest.Client(t, sys.Datacenter).Client)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	if _, err := finder.VirtualMachine(ctx, "pv-"+uid); !errors.As(err, new(*find.NotFoundError)) {
		t.Errorf("pod VM pv-%s after the guest cluster was deleted: %v, want not found", uid, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "guestclusters", "team-a.gc1")); !os.IsNotExist(err) {
		t.Errorf("control plane directory after delete: %v", err)
	}
}

// guestClustersUp is `podvisor up` with guests and bin/podvisor-guest
// (guestBinary), for guest clusters whose control planes run in VMs.
func guestClustersUp(t *testing.T, hosts int) (*allinone.System, string) {
	t.Helper()
	settings := config.Layered(config.Map(map[string]string{"PODVISOR_GUESTCLUSTER_BINARY": guestBinary(t)}), config.Env())
	return guestsUp(t, "simulated guests run in namespaces and cgroups", allinone.Config{HostsPerCluster: hosts, Settings: settings}, "kubectl")
}

// guestKubectl waits for the kubeconfig of guest cluster team-a/name
// (`get guestcluster --kubeconfig`, as the admin) and returns kubectl with
// it; its output is trimmed of surrounding space.
func guestKubectl(t *testing.T, dir, name string, wait time.Duration) func(args ...string) (string, error) {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	waitFor(t, "the guest cluster's kubeconfig", wait, func() bool {
		out, _, code := run(t, dir, "", "--nats-creds", filepath.Join(dir, "nats-auth", "admin.creds"), "get", "guestcluster", name, "-n", "team-a", "--kubeconfig")
		return code == 0 && os.WriteFile(kubeconfig, []byte(out), 0o600) == nil
	})
	return func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(b)), err
	}
}

// teamVM is `get vm NAME -n team-a -o json` (an empty status when it
// cannot be read).
func teamVM(t *testing.T, dir, name string) events.VirtualMachine {
	t.Helper()
	out, _, code := run(t, dir, "", "get", "vm", name, "-n", "team-a", "-o", "json")
	var vm events.VirtualMachine
	if code != 0 || json.Unmarshal([]byte(out), &vm) != nil || vm.Status == nil {
		return events.VirtualMachine{Status: &events.VirtualMachineStatus{}}
	}
	return vm
}

// powerTeamVM re-applies VM team-a/name with another power state.
func powerTeamVM(t *testing.T, dir, name, state string) {
	t.Helper()
	vm := teamVM(t, dir, name)
	vm.Status, vm.Spec.PowerState = nil, state
	b, _ := json.Marshal(vm)
	if out, errOut, code := run(t, dir, string(b), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply VM %s %s: %d %s %s", name, state, code, out, errOut)
	}
}

// guestBinary is bin/podvisor-guest (`make guest`), from
// PODVISOR_GUEST_BIN: the guestcluster module is built outside the
// workspace, and its first build compiles kube-apiserver.
func guestBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("PODVISOR_GUEST_BIN")
	if bin == "" {
		if privtest.Required() {
			t.Fatal("PODVISOR_GUEST_BIN is not set: CI builds bin/podvisor-guest with `make guest` before `make test`")
		}
		t.Skip("PODVISOR_GUEST_BIN is not set: run `make guest` first (make test passes bin/podvisor-guest when it exists)")
	}
	return bin
}

func waitFor(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
