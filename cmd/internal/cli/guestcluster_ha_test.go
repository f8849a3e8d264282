package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// TestGuestClusterControlPlaneSurvivesLosingAMember is a highly available
// guest cluster as a user meets it on `podvisor up` with guests: apply a
// GuestCluster with three control-plane VMs; each VM's guest runs an etcd
// member and an API server, kubectl reaches them through one endpoint,
// and the podvisor node runs in the member holding its Lease. Powering
// off that member's VM loses nothing: what was written before is read
// through the endpoint (from the other members' API servers, so their
// etcd holds it), another member takes the node over, and a pod run
// with kubectl then becomes a Running pod VM whose log kubectl reads.
// A pod on the worker node (its VM's node reaches the API servers through
// the endpoint) has its log read through each member left. The member's
// VM powered on again rejoins. A changed count is refused; deleting the
// guest cluster deletes all its VMs.
func TestGuestClusterControlPlaneSurvivesLosingAMember(t *testing.T) {
	sys, dir := guestClustersUp(t, 3)

	manifest := func(cps int) string {
		return fmt.Sprintf(`apiVersion: podvisor.io/v1alpha1
kind: VirtualMachineClass
metadata: {name: small}
spec: {cpus: 2, memory: 4Gi}
---
apiVersion: podvisor.io/v1alpha1
kind: GuestCluster
metadata: {name: ha, namespace: team-a}
spec: {version: v1.37.2, controlPlane: {replicas: %d, className: small}, workers: {replicas: 1, className: small}}
`, cps)
	}
	if out, errOut, code := run(t, dir, manifest(3), "apply", "-f", "-"); code != 0 {
		t.Fatalf("apply: %d %s %s", code, out, errOut)
	}
	kubectl := guestKubectl(t, dir, "ha", 4*time.Minute)
	if out, err := kubectl("wait", "--for=condition=Ready", "node/podvisor", "--timeout=60s"); err != nil {
		t.Fatalf("node podvisor not Ready: %v\n%s", err, out)
	}
	getVM := func(name string) events.VirtualMachine { return teamVM(t, dir, name) }
	// Three VMs, each running a member of one etcd cluster (its data on
	// the VM's data disk) and its own API server.
	for i := range 3 {
		name := fmt.Sprintf("ha-control-plane-%d", i)
		vm := getVM(name)
		if vm.Status.PowerState != events.PowerStatePoweredOn || vm.Status.Host == "" {
			t.Fatalf("control-plane VM %s: %q on %q, want PoweredOn on a host", name, vm.Status.PowerState, vm.Status.Host)
		}
		key, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(vm.Status.UID))
		if !ok {
			t.Fatalf("control-plane VM %s runs no guest", name)
		}
		g, _ := sys.Datacenter.Guests().Guest(key)
		root := fmt.Sprintf("/proc/%d/root%s", g.PID, guestcluster.ControlPlaneDataDir)
		if _, err := os.Stat(root + "/etcd/member"); err != nil {
			t.Errorf("control-plane VM %s keeps no etcd member: %v", name, err)
		}
		if !strings.Contains(vm.Spec.UserData, fmt.Sprintf("--member %d --members 3", i)) {
			t.Errorf("control-plane VM %s: its user data does not start member %d of 3", name, i)
		}
		if b, err := os.ReadFile(root + "/guest.log"); err != nil || !strings.Contains(string(b), "guest cluster ready") {
			t.Errorf("control-plane VM %s: podvisor-guest is not ready (%v):\n%s", name, err, b)
		}
		// Its etcd lists the three members: one cluster, not three.
		if got := etcdMembers(t, sys, key, dir, i); !slices.Equal(got, []string{"member-0", "member-1", "member-2"}) {
			t.Errorf("control-plane VM %s: etcd members %v, want member-0, member-1 and member-2", name, got)
		}
	}
	// The worker node runs in its VM, which reaches the API servers
	// through the endpoint; each member reaches its kubelet API.
	waitFor(t, "worker node ha-worker-0 Ready", 3*time.Minute, func() bool {
		out, err := kubectl("get", "node", "ha-worker-0", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && out == "True"
	})
	if out, err := kubectl("create", "configmap", "before", "--from-literal=written=before-the-loss"); err != nil {
		t.Fatalf("kubectl create configmap: %v\n%s", err, out)
	}
	holder := func() string {
		out, err := kubectl("get", "lease", "-n", "kube-system", "podvisor-node", "-o", "jsonpath={.spec.holderIdentity}")
		if err != nil {
			return ""
		}
		return out
	}
	var leader string
	waitFor(t, "a member holding the podvisor node's Lease", time.Minute, func() bool { leader = holder(); return leader != "" })
	var lost int
	if _, err := fmt.Sscanf(leader, "member-%d", &lost); err != nil || lost < 0 || lost > 2 {
		t.Fatalf("the Lease's holder %q is not one of the members", leader)
	}
	lostVM := fmt.Sprintf("ha-control-plane-%d", lost)
	powerTeamVM(t, dir, lostVM, events.PowerStatePoweredOff)
	waitFor(t, "VM "+lostVM+" off", 2*time.Minute, func() bool {
		_, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(getVM(lostVM).Status.UID))
		return getVM(lostVM).Status.PowerState == events.PowerStatePoweredOff && !ok
	})
	// What was written before is read through the endpoint, again and
	// again (the balancer takes turns between the two members left).
	for i := range 4 {
		waitFor(t, fmt.Sprintf("configmap before, read %d with %s off", i, lostVM), time.Minute, func() bool {
			out, err := kubectl("get", "configmap", "before", "-o", "jsonpath={.data.written}")
			return err == nil && out == "before-the-loss"
		})
	}
	// The record says so: two of three control-plane VMs run, and the
	// cluster is Ready.
	cluster := func() (rec events.GuestClusterRecord) {
		out, _, code := run(t, dir, "", "get", "guestcluster", "ha", "-n", "team-a", "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), &rec) != nil {
			return events.GuestClusterRecord{}
		}
		return rec
	}
	waitFor(t, "the record's control planes 2 of 3 ready, the cluster Ready", 2*time.Minute, func() bool {
		r := cluster()
		return r.Phase == events.GuestClusterPhaseReady && r.ReadyControlPlanes == 2 && len(r.ControlPlanes) == 3 &&
			!r.ControlPlanes[lost].Ready
	})
	waitFor(t, "another member running the podvisor node", 2*time.Minute, func() bool {
		h := holder()
		return h != "" && h != leader
	})
	image := sys.Endpoints.Registry + "/" + ociregistry.BusyboxRepoTag
	if out, err := kubectl("run", "bb", "--image="+image, "--restart=Never", "--", "sh", "-c", "echo hello after the loss; sleep 3600"); err != nil {
		t.Fatalf("kubectl run: %v\n%s", err, out)
	}
	waitFor(t, "pod team-a/ha-default-bb Running on the supervisor", 2*time.Minute, func() bool {
		out, _, code := run(t, dir, "", "get", "pod", "ha-default-bb", "-n", "team-a", "-o", "json")
		var p struct{ Status struct{ Phase string } }
		return code == 0 && json.Unmarshal([]byte(out), &p) == nil && p.Status.Phase == "Running"
	})
	waitFor(t, "guest pod bb Running", time.Minute, func() bool {
		out, err := kubectl("get", "pod", "bb", "-o", "jsonpath={.status.phase}")
		return err == nil && out == "Running"
	})
	for i := range 2 { // through each member left's API server
		waitFor(t, fmt.Sprintf("kubectl logs bb (%d)", i), time.Minute, func() bool {
			out, err := kubectl("logs", "bb")
			return err == nil && strings.Contains(out, "hello after the loss")
		})
	}
	// A pod on the worker node: its log comes through the worker VM's
	// kubelet API, which each member left reaches in its own guest.
	if out, err := kubectl("run", "on-worker", "--image="+image, "--restart=Never",
		`--overrides={"apiVersion":"v1","spec":{"nodeSelector":{"podvisor.io/worker":"small"}}}`, "--", "sh", "-c", "echo hello from the worker; sleep 3600"); err != nil {
		t.Fatalf("kubectl run on-worker: %v\n%s", err, out)
	}
	waitFor(t, "pod on-worker bound to ha-worker-0 and Running", 2*time.Minute, func() bool {
		out, err := kubectl("get", "pod", "on-worker", "-o", "jsonpath={.spec.nodeName} {.status.phase}")
		return err == nil && out == "ha-worker-0 Running"
	})
	for i := range 2 {
		waitFor(t, fmt.Sprintf("kubectl logs on-worker (%d)", i), time.Minute, func() bool {
			out, err := kubectl("logs", "on-worker")
			return err == nil && strings.Contains(out, "hello from the worker")
		})
	}
	// The member's VM powered on again rejoins: its API server answers
	// from its own etcd member, which has caught up with what was
	// written while it was off.
	powerTeamVM(t, dir, lostVM, events.PowerStatePoweredOn)
	waitFor(t, "VM "+lostVM+" running again", 3*time.Minute, func() bool {
		_, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(getVM(lostVM).Status.UID))
		return getVM(lostVM).Status.PowerState == events.PowerStatePoweredOn && ok
	})
	waitFor(t, lostVM+"'s podvisor-guest ready again", 3*time.Minute, func() bool {
		key, ok := sys.Datacenter.Guests().KeyOf(events.NativeVMName(getVM(lostVM).Status.UID))
		if !ok {
			return false
		}
		g, _ := sys.Datacenter.Guests().Guest(key)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root%s/guest.log", g.PID, guestcluster.ControlPlaneDataDir))
		return err == nil && strings.Count(string(b), "guest cluster ready") >= 2
	})
	waitFor(t, "the record's control planes 3 of 3 ready", 2*time.Minute, func() bool { return cluster().ReadyControlPlanes == 3 })
	if out, err := kubectl("get", "pods", "-o", "name"); err != nil || !strings.Contains(out, "pod/bb") {
		t.Errorf("kubectl get pods after the member rejoined: %v\n%s", err, out)
	}

	// The count is fixed at creation: another is refused, naming the
	// field, and the cluster keeps running.
	if out, errOut, code := run(t, dir, manifest(5), "apply", "-f", "-"); code != 1 || !strings.Contains(out, "guestcluster/team-a/ha rejected: spec.controlPlane.replicas") {
		t.Errorf("apply with 5 control planes: exit %d, %s%s; want 1, refused naming spec.controlPlane.replicas", code, out, errOut)
	}
	if r := cluster(); r.Phase != events.GuestClusterPhaseReady || r.Spec.ControlPlane.Replicas != 3 {
		t.Errorf("guest cluster after a refused change: %s with %d control planes, want still Ready with 3", r.Phase, r.Spec.ControlPlane.Replicas)
	}

	if out, errOut, code := run(t, dir, "", "delete", "guestcluster", "ha", "-n", "team-a"); code != 0 {
		t.Fatalf("delete guestcluster: %d %s %s", code, out, errOut)
	}
	waitFor(t, "the guest cluster, its pods, its worker and its three control-plane VMs gone", 3*time.Minute, func() bool {
		gone := 0
		all := [][]string{{"pod", "ha-default-bb"}, {"pod", "ha-default-on-worker"}, {"guestcluster", "ha"}, {"vm", "ha-worker-0"},
			{"vm", "ha-control-plane-0"}, {"vm", "ha-control-plane-1"}, {"vm", "ha-control-plane-2"}}
		for _, args := range all {
			if _, _, code := run(t, dir, "", append(append([]string{"get"}, args...), "-n", "team-a")...); code != 0 {
				gone++
			}
		}
		return gone == len(all)
	})
}

// etcdMembers asks the etcd member in a control-plane VM's guest (key)
// for the cluster's members (etcd's gRPC gateway), over TLS with the
// member certificate the supervisor signed, and returns their names,
// sorted.
func etcdMembers(t *testing.T, sys *allinone.System, key, stateDir string, member int) []string {
	t.Helper()
	pkiDir := filepath.Join(stateDir, "guestclusters", "team-a.ha", "pki")
	pair, err := tls.LoadX509KeyPair(filepath.Join(pkiDir, "etcd.pem"), filepath.Join(pkiDir, "etcd-key.pem"))
	if err != nil {
		t.Fatalf("the etcd certificate the supervisor signed: %v", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, ServerName: "127.0.0.1"},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return sys.Datacenter.Guests().DialGuest(ctx, key, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	url := fmt.Sprintf("https://127.0.0.1:%d/v3/cluster/member/list", guestcluster.EtcdClientPort(member))
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Errorf("member %d's etcd: %v", member, err)
		return nil
	}
	defer resp.Body.Close()
	var list struct{ Members []struct{ Name string } }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Errorf("member %d's etcd: member list: %v", member, err)
		return nil
	}
	var names []string
	for _, m := range list.Members {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	return names
}
