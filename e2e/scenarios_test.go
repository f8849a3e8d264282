//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
)

// seededImages are the images `podvisor up` seeds into its registry.
var seededImages = []string{"podvisor/base:1.0", "podvisor/web:1.0", "podvisor/worker:1.0"}

const frontendManifest = `apiVersion: podvisor.io/v1alpha1
kind: Network
metadata: {name: frontend}
spec: {vlan: 120, cidr: 10.20.0.0/24, gateway: 10.20.0.1, scope: {clusters: [cluster-1]}}
`

// testPod is one pod the suite deploys, with what vSphere must show for it.
type testPod struct {
	name, network, image string
	cpuMilli, memMiB     int64
}

func (p testPod) manifest(ns string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  annotations: {podvisor.io/networks: %s}
spec:
  containers:
  - name: app
    image: %s
    resources: {requests: {cpu: %dm, memory: %dMi}}
`, p.name, ns, p.network, p.image, p.cpuMilli, p.memMiB)
}

// k8s is the pod as the Kubernetes API types hold it, for the shared sizing
// function.
func (p testPod) k8s(ns string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: ns, Annotations: map[string]string{"podvisor.io/networks": p.network}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: p.image,
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    *resource.NewMilliQuantity(p.cpuMilli, resource.DecimalSI),
				corev1.ResourceMemory: *resource.NewQuantity(p.memMiB<<20, resource.BinarySI),
			}},
		}}},
	}
}

func makePods(n int, registry string, networks []string) []testPod {
	pods := make([]testPod, n)
	for i := range pods {
		pods[i] = testPod{
			name:     fmt.Sprintf("p%03d", i),
			network:  networks[i%len(networks)],
			image:    registry + "/" + seededImages[i%len(seededImages)],
			cpuMilli: int64(100 + 100*(i%5)),
			memMiB:   int64(64 * (1 + i%4)),
		}
	}
	return pods
}

func writeManifest(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitVMRunning waits until the CLI shows every named pod with its VM
// powered on (see vmRunning: without guests, that is as far as a pod goes).
func (s *system) waitVMRunning(t *testing.T, ns string, names []string, timeout time.Duration) map[string]corev1.Pod {
	t.Helper()
	var got map[string]corev1.Pod
	eventually(t, timeout, 2*time.Second, fmt.Sprintf("%d pods of %s with their VM running", len(names), ns), func() error {
		pods, err := s.cliPods(ns)
		if err != nil {
			return err
		}
		got = map[string]corev1.Pod{}
		phases := map[string]int{}
		for _, p := range pods {
			got[p.Name] = p
		}
		var missing []string
		for _, n := range names {
			p, ok := got[n]
			switch {
			case !ok:
				phases["absent"]++
				missing = append(missing, n)
			case !vmRunning(p):
				phases[string(p.Status.Phase)+"/"+p.Status.Reason]++
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			if len(missing) > 5 {
				missing = append(missing[:5], "…")
			}
			return fmt.Errorf("VM not running: %v (%s)", phases, strings.Join(missing, ", "))
		}
		return nil
	})
	return got
}

// TestPods deploys 100 pods across two networks and the three seeded images,
// checks them through vSphere, then migrates, drains, fails a host and
// deletes, each step judged through vSphere.
func TestPods(t *testing.T) {
	s := startUp(t)
	vc := connectVCenter(t, s.env["GOVC_URL"])
	const ns = "e2e"
	out := s.mustCLI(nil, "apply", "-f", writeManifest(t, s.dir, "frontend.yaml", frontendManifest))
	if !strings.Contains(out, "network/frontend requested") {
		t.Fatalf("apply network: %q", out)
	}
	pods := makePods(100, s.env["PODVISOR_REGISTRY"], []string{"frontend", "default"})
	var manifest strings.Builder
	names := make([]string, len(pods))
	for i, p := range pods {
		manifest.WriteString(p.manifest(ns))
		names[i] = p.name
	}
	start := time.Now()
	// Admission answers may come after apply's wait on a busy machine; the
	// outcome is judged by what runs, below.
	s.mustCLI(nil, "apply", "--wait", "0", "-f", writeManifest(t, s.dir, "pods.yaml", manifest.String()))
	cliPods := s.waitVMRunning(t, ns, names, 5*time.Minute)
	t.Logf("100 pods with their VM running after %s", time.Since(start).Round(time.Millisecond))
	// No guests run here: a pod whose VM is on must not claim Running.
	for name, p := range cliPods {
		if p.Status.Phase == corev1.PodRunning || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil ||
			p.Status.ContainerStatuses[0].State.Waiting.Reason != events.ReasonContainerCreating {
			t.Errorf("pod %s without a guest shows phase %s, containers %+v; want Pending, ContainerCreating", name, p.Status.Phase, p.Status.ContainerStatuses)
			break
		}
	}

	snap := vc.mustRead(t)
	checkPlacement(t, snap, ns, pods, cliPods)

	t.Run("migrate", func(t *testing.T) {
		s.requireVerb(t, "migrate")
		p := cliPods["p001"] // on the default network: any host will do
		target := ""
		for _, h := range sortedHosts(snap) {
			if h.Name != p.Spec.NodeName && h.Connection == "connected" && !h.Maintenance {
				target = h.Name
				break
			}
		}
		s.mustCLI(nil, "migrate", "pod", p.Name, "-n", ns, "--to", target, "--wait", "3m")
		eventually(t, 30*time.Second, time.Second, "VM on the migration target", func() error {
			vm, err := oneVM(vc.mustRead(t), string(p.UID))
			if err != nil {
				return err
			}
			if vm.Host != target || !vm.PoweredOn {
				return fmt.Errorf("VM %s is on %s (powered on %v), want %s", vm.Name, vm.Host, vm.PoweredOn, target)
			}
			return nil
		})
		got := s.waitVMRunning(t, ns, []string{p.Name}, time.Minute)
		if got[p.Name].Spec.NodeName != target {
			t.Errorf("CLI shows %s on %s after the migration, want %s", p.Name, got[p.Name].Spec.NodeName, target)
		}
	})

	t.Run("drain", func(t *testing.T) {
		s.requireVerb(t, "drain")
		host := busiestHost(vc.mustRead(t), ns, "cluster-2")
		before := len(vmsOn(vc.mustRead(t), host))
		s.mustCLI(nil, "drain", "host", host, "--wait", "5m")
		snap := vc.mustRead(t)
		if left := vmsOn(snap, host); len(left) > 0 {
			t.Errorf("after the drain %s still holds %d pod VMs: %v", host, len(left), left)
		}
		if !snap.Hosts[host].Maintenance {
			t.Errorf("vSphere does not show %s in maintenance mode after the drain", host)
		}
		s.waitVMRunning(t, ns, names, 2*time.Minute)
		t.Logf("drained %s: %d pod VMs moved", host, before)
	})

	t.Run("host failure", func(t *testing.T) {
		s.requireVerb(t, "sim")
		host := busiestHost(vc.mustRead(t), ns, "cluster-1")
		var victims []string
		for _, v := range vmsOn(vc.mustRead(t), host) {
			victims = append(victims, v.UID())
		}
		if len(victims) == 0 {
			t.Fatalf("no pod VM on %s", host)
		}
		s.mustCLI(nil, "sim", "host", "fail", host)
		start := time.Now()
		eventually(t, 3*time.Minute, 2*time.Second, "pods of the failed host with their VM running elsewhere", func() error {
			pods, err := s.cliPods(ns)
			if err != nil {
				return err
			}
			snap, err := vc.read(context.Background())
			if err != nil {
				return err
			}
			for _, p := range pods {
				if !vmRunning(p) || p.Spec.NodeName == host {
					return fmt.Errorf("%s is %s on %s", p.Name, p.Status.Phase, p.Spec.NodeName)
				}
			}
			for _, uid := range victims {
				live := 0
				for _, v := range snap.VMs {
					if v.UID() == uid && v.Host != host && v.PoweredOn {
						live++
					}
				}
				if live != 1 {
					return fmt.Errorf("pod %s has %d powered-on VMs off %s", uid, live, host)
				}
			}
			return nil
		})
		t.Logf("%d pods of %s with their VM running elsewhere after %s", len(victims), host, time.Since(start).Round(time.Millisecond))
		s.mustCLI(nil, "sim", "host", "recover", host)
		// The VMs left on the dead host go once it answers again.
		eventually(t, 3*time.Minute, 3*time.Second, "leftover VMs removed from the recovered host", func() error {
			snap, err := vc.read(context.Background())
			if err != nil {
				return err
			}
			if d := duplicatesByUID(snap.vmsOf(ns)); len(d) > 0 {
				return fmt.Errorf("pods with more than one VM: %v", d)
			}
			return nil
		})
	})

	t.Run("delete", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan string, len(names))
		work := make(chan string)
		for range 4 {
			wg.Go(func() {
				for n := range work {
					if r := s.cli(nil, "delete", "pod", n, "-n", ns); r.code != 0 {
						errs <- r.String()
					}
				}
			})
		}
		for _, n := range names {
			work <- n
		}
		close(work)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
		eventually(t, 3*time.Minute, 2*time.Second, "every pod VM gone", func() error {
			snap, err := vc.read(context.Background())
			if err != nil {
				return err
			}
			if n := len(snap.vmsOf(ns)); n > 0 {
				return fmt.Errorf("%d pod VMs of %s remain", n, ns)
			}
			pods, err := s.cliPods(ns)
			if err != nil {
				return err
			}
			if len(pods) > 0 {
				return fmt.Errorf("%d pods still listed", len(pods))
			}
			return nil
		})
	})
	// The whole run above, read back: no generated password or key in any
	// log, CLI output, event, KV value or the status page.
	t.Run("no secret leaks", func(t *testing.T) { s.checkNoSecrets(t) })
}

// checkPlacement compares what vSphere shows with the manifests and with
// the host the CLI names.
func checkPlacement(t *testing.T, snap *snapshot, ns string, pods []testPod, cli map[string]corev1.Pod) {
	t.Helper()
	vms := snap.vmsOf(ns)
	if len(vms) != len(pods) {
		t.Errorf("vSphere shows %d pod VMs of %s, want %d", len(vms), ns, len(pods))
	}
	ips := map[string]string{}
	for _, p := range pods {
		cp := cli[p.name]
		vm, err := oneVM(snap, string(cp.UID))
		if err != nil {
			t.Errorf("%s: %v", p.name, err)
			continue
		}
		if vm.Name != "pv-"+string(cp.UID) {
			t.Errorf("%s: VM name %s, want pv-%s", p.name, vm.Name, cp.UID)
		}
		if vm.Host != cp.Spec.NodeName {
			t.Errorf("%s: VM on %s, podvisor says %s", p.name, vm.Host, cp.Spec.NodeName)
		}
		if !vm.PoweredOn {
			t.Errorf("%s: VM %s is not powered on", p.name, vm.Name)
		}
		if want := events.SizePodVM(p.k8s(ns)).MemoryMiB; int64(vm.MemoryMB) != want {
			t.Errorf("%s: VM memory %d MiB, sizing function says %d MiB", p.name, vm.MemoryMB, want)
		}
		if want := []string{"pv-" + p.network}; strings.Join(vm.PortGroups, ",") != strings.Join(want, ",") {
			t.Errorf("%s: NICs on %v, want %v", p.name, vm.PortGroups, want)
		}
		if p.network == "frontend" && vm.Cluster != "cluster-1" {
			t.Errorf("%s (frontend) runs on %s in %s, outside the network's scope cluster-1", p.name, vm.Host, vm.Cluster)
		}
		ip := vm.SpecIP()
		if ip == "" || ip != cp.Status.PodIP {
			t.Errorf("%s: guest spec address %q, podvisor says %q", p.name, ip, cp.Status.PodIP)
		}
		key := p.network + "/" + ip
		if other, dup := ips[key]; dup {
			t.Errorf("%s and %s share %s", p.name, other, key)
		}
		ips[key] = p.name
	}
}

// oneVM finds the single VM of a pod uid.
func oneVM(snap *snapshot, uid string) (podVM, error) {
	var found []podVM
	for _, v := range snap.VMs {
		if v.UID() == uid {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		return podVM{}, fmt.Errorf("pod uid %s has %d VMs in vSphere, want 1", uid, len(found))
	}
	return found[0], nil
}

func vmsOn(snap *snapshot, host string) []podVM {
	var out []podVM
	for _, v := range snap.VMs {
		if v.Host == host {
			out = append(out, v)
		}
	}
	return out
}

// busiestHost is the host of cluster holding the most pod VMs of ns.
func busiestHost(snap *snapshot, ns, cluster string) string {
	count := map[string]int{}
	for _, v := range snap.vmsOf(ns) {
		h := snap.Hosts[v.Host]
		if h.Cluster == cluster && !h.Maintenance && h.Connection == "connected" {
			count[v.Host]++
		}
	}
	best := ""
	for h, n := range count {
		if best == "" || n > count[best] || n == count[best] && h < best {
			best = h
		}
	}
	return best
}

func sortedHosts(snap *snapshot) []vhost {
	var hs []vhost
	for _, h := range snap.Hosts {
		hs = append(hs, h)
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].Name < hs[j].Name })
	return hs
}

// duplicatesByUID lists pod uids with more than one VM.
func duplicatesByUID(vms []podVM) map[string]int {
	n := map[string]int{}
	for _, v := range vms {
		n[v.UID()]++
	}
	for uid, c := range n {
		if c < 2 {
			delete(n, uid)
		}
	}
	return n
}

// duplicatesByName lists VM names that appear more than once.
func duplicatesByName(vms []podVM) map[string]int {
	n := map[string]int{}
	for _, v := range vms {
		n[v.Name]++
	}
	for name, c := range n {
		if c < 2 {
			delete(n, name)
		}
	}
	return n
}

// TestRepeatedRequests publishes every pod.requested three times with raw
// NATS clients: exactly one VM per pod.
func TestRepeatedRequests(t *testing.T) {
	s := startUp(t)
	vc := connectVCenter(t, s.env["GOVC_URL"])
	nc, js := connectNATS(t, s.env["PODVISOR_NATS_URL"], s.natsOpts()...)
	const ns = "repeat"
	reg := s.env["PODVISOR_REGISTRY"]
	pod := func(name string) events.PodRequested {
		p := testPod{name: name, network: "default", image: reg + "/" + seededImages[0], cpuMilli: 200, memMiB: 128}
		return events.PodRequested{Pod: *p.k8s(ns)}
	}
	key := func(name string) string { return ns + "/" + name }
	// Binary mode, one id three times: JetStream keeps one copy.
	for range 3 {
		publishBinary(t, js, subjectPodRequested, newEvent(t, "same-id-1", typePodRequested, key("same-id"), pod("same-id")))
	}
	// Structured mode as `nats pub` sends it, one id three times: no
	// Nats-Msg-Id, so the stream holds three copies and the services must
	// see them as one request.
	for range 3 {
		publishStructured(t, nc, subjectPodRequested, newEvent(t, "structured-1", typePodRequested, key("structured"), pod("structured")))
	}
	// Three different ids for one pod: three requests for the same thing.
	for i := range 3 {
		publishBinary(t, js, subjectPodRequested, newEvent(t, fmt.Sprintf("other-id-%d", i), typePodRequested, key("other-ids"), pod("other-ids")))
	}
	names := []string{"same-id", "structured", "other-ids"}
	cli := s.waitVMRunning(t, ns, names, 3*time.Minute)
	// Let any late duplicate show itself before counting.
	time.Sleep(3 * time.Second)
	snap := vc.mustRead(t)
	vms := snap.vmsOf(ns)
	if len(vms) != len(names) {
		t.Errorf("vSphere shows %d VMs for %d pods: %v", len(vms), len(names), vms)
	}
	for _, n := range names {
		if _, err := oneVM(snap, string(cli[n].UID)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if d := duplicatesByName(vms); len(d) > 0 {
		t.Errorf("duplicate VM names: %v", d)
	}
}

// TestMalformedEvents sends what is not a pod request: each lands in the
// dead-letter stream with a reason, and vSphere gains no VM.
func TestMalformedEvents(t *testing.T) {
	s := startUp(t)
	vc := connectVCenter(t, s.env["GOVC_URL"])
	nc, js := connectNATS(t, s.env["PODVISOR_NATS_URL"], s.natsOpts()...)
	before := len(vc.mustRead(t).VMs)

	type bad struct{ marker, what string }
	cases := []bad{
		{"not-a-cloudevent-7f3a", "a body that is not a CloudEvent"},
		{"binary-not-a-pod-7f3a", "a binary CloudEvent whose data is not a pod"},
		{"structured-not-a-pod-7f3a", "a structured CloudEvent whose data is not a pod"},
	}
	publishRaw(t, nc, subjectPodRequested, []byte("hello podvisor, "+cases[0].marker+" is not an event"))
	publishBinary(t, js, subjectPodRequested, newEvent(t, "bad-binary-1", typePodRequested, "malformed/x1",
		map[string]any{"pod": map[string]any{"metadata": map[string]any{"name": "x1", "namespace": "malformed"}, "spec": map[string]any{"containers": "none"}}, "note": cases[1].marker}))
	publishStructured(t, nc, subjectPodRequested, newEvent(t, "bad-structured-1", typePodRequested, "malformed/x2",
		map[string]any{"manifest": cases[2].marker}))

	dlq, err := js.Stream(context.Background(), "DLQ")
	if err != nil {
		t.Fatalf("DLQ stream: %v", err)
	}
	reasons := map[string]string{}
	eventually(t, 2*time.Minute, time.Second, "every malformed event dead-lettered", func() error {
		info, err := dlq.Info(context.Background())
		if err != nil {
			return err
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			m, err := dlq.GetMsg(context.Background(), seq)
			if err != nil {
				continue
			}
			for _, c := range cases {
				if strings.Contains(string(m.Data), c.marker) && m.Header.Get("Pv-Dlq-Reason") != "" {
					reasons[c.marker] = m.Header.Get("Pv-Dlq-Service") + ": " + m.Header.Get("Pv-Dlq-Reason")
				}
			}
		}
		for _, c := range cases {
			if reasons[c.marker] == "" {
				return fmt.Errorf("no dead letter for %s", c.what)
			}
		}
		return nil
	})
	for _, c := range cases {
		t.Logf("%s → %s", c.what, reasons[c.marker])
	}
	// Give a wrongly accepted request time to reach vSphere before counting.
	time.Sleep(3 * time.Second)
	if after := len(vc.mustRead(t).VMs); after != before {
		t.Errorf("vSphere had %d pod VMs before the malformed events and %d after", before, after)
	}
	for _, n := range []string{"x1", "x2"} {
		if r := s.cli(nil, "get", "pod", n, "-n", "malformed"); r.code == 0 {
			t.Errorf("a malformed request made pod malformed/%s: %s", n, r.stdout)
		}
	}
}
