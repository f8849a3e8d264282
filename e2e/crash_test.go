//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/servetest"
)

var serviceNames = []string{"imagecache", "migration", "netconfig", "provisioner", "scheduler"}

// natsServer is the helper NATS server (internal/natsd) of the crash test:
// the same port and store directory across restarts.
type natsServer struct {
	t        *testing.T
	bin, dir string
	port     int
	p        *process
}

func (n *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

func (n *natsServer) start() {
	n.t.Helper()
	n.p = startProcess(n.t, "natsd", filepath.Join(n.dir, "natsd.log"), os.Environ(), n.bin,
		"-addr", fmt.Sprintf("127.0.0.1:%d", n.port), "-dir", filepath.Join(n.dir, "js"))
	eventually(n.t, 30*time.Second, 100*time.Millisecond, "natsd accepting connections", func() error {
		if n.p.exited() {
			return fmt.Errorf("natsd exited: %v\n%s", n.p.err, tail(n.p.log, 10))
		}
		nc, err := nats.Connect(n.url(), nats.Timeout(time.Second))
		if err != nil {
			return err
		}
		nc.Close()
		return nil
	})
}

// service is one `podvisor serve NAME` process and its history.
type service struct {
	name, health string
	p            *process
	kills        int // SIGKILLs sent by the test
	selfExits    int // exits the test did not cause
}

// TestCrashConvergence deploys 300 pods while services are killed with
// SIGKILL and restarted, and NATS is restarted once; then nothing may be
// lost, duplicated or leaked.
func TestCrashConvergence(t *testing.T) {
	if testing.Short() {
		t.Skip("crash convergence takes minutes")
	}
	bin := podvisorBin(t)
	work := t.TempDir()
	ns := &natsServer{t: t, bin: filepath.Join(work, "natsd"), dir: work, port: servetest.FreePort(t)}
	if out, err := exec.Command("go", "build", "-o", ns.bin, "./internal/natsd").CombinedOutput(); err != nil {
		t.Fatalf("build natsd: %v\n%s", err, out)
	}
	ns.start()
	t.Cleanup(func() {
		if err := ns.p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
			t.Errorf("natsd: %v", err)
		}
	})

	// The simulator, Redis and the registry stay up all along in `up`; NATS
	// is outside it so that it can restart without losing the datacenter.
	s := startUp(t, "--services=none", "--nats-url", ns.url())
	vc := connectVCenter(t, s.env["GOVC_URL"])
	_, js := connectNATS(t, ns.url())

	var mu sync.Mutex // guards svcs' processes and counters
	svcs := map[string]*service{}
	startSvc := func(sv *service) {
		// Info level: a run that fails shows what each service did with
		// the pods that never ran (below).
		env := append(s.baseEnv(), "PODVISOR_HEALTH_ADDR="+sv.health, "PODVISOR_LOG_LEVEL=info")
		sv.p = startProcess(t, "serve "+sv.name, filepath.Join(work, sv.name+".log"), env, bin, "serve", sv.name, "--state-dir", s.dir)
	}
	for _, n := range serviceNames {
		// Port 0: a port picked now could be anyone's by the time a killed
		// service starts again on it.
		sv := &service{name: n, health: "127.0.0.1:0"}
		startSvc(sv)
		svcs[n] = sv
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, sv := range svcs {
			if err := sv.p.stop(syscall.SIGTERM, 45*time.Second); err != nil {
				t.Errorf("serve %s: %v\n%s", sv.name, err, tail(sv.p.log, 20))
			}
		}
	})

	// Chaos: every 2–4 s one random service dies by SIGKILL and starts
	// again; a service that exits by itself is started again too, and
	// counted. NATS restarts once, a third of the way through.
	ctx, stopChaos := context.WithCancel(context.Background())
	natsRestarted := make(chan struct{})
	restartNATS := make(chan struct{}, 1)
	var chaos sync.WaitGroup
	chaos.Go(func() {
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
		for {
			select {
			case <-ctx.Done():
				return
			case <-restartNATS:
				if err := ns.p.stop(syscall.SIGTERM, 30*time.Second); err != nil {
					t.Errorf("natsd stop: %v", err)
				}
				time.Sleep(time.Second)
				ns.start()
				t.Logf("NATS restarted")
				close(natsRestarted)
			case <-time.After(time.Duration(2000+rng.IntN(2000)) * time.Millisecond):
				mu.Lock()
				for _, sv := range svcs {
					if sv.p.exited() {
						sv.selfExits++
						t.Logf("serve %s exited by itself (%v); starting it again\n%s", sv.name, sv.p.err, tail(sv.p.log, 5))
						startSvc(sv)
					}
				}
				sv := svcs[serviceNames[rng.IntN(len(serviceNames))]]
				sv.p.kill()
				sv.kills++
				t.Logf("SIGKILL %s", sv.name)
				time.Sleep(time.Duration(100+rng.IntN(400)) * time.Millisecond)
				startSvc(sv)
				mu.Unlock()
			}
		}
	})

	// 300 pods in batches of 50, each applied until the CLI gets it through
	// (NATS may be restarting); a re-applied batch is a no-op for the pods
	// that made it.
	const (
		podsNS  = "crash"
		total   = 300
		batches = 6
	)
	pods := makePods(total, s.env["PODVISOR_REGISTRY"], []string{"default"})
	start := time.Now()
	for b := range batches {
		if b == 2 {
			restartNATS <- struct{}{}
		}
		var m strings.Builder
		for _, p := range pods[b*total/batches : (b+1)*total/batches] {
			m.WriteString(p.manifest(podsNS))
		}
		file := writeManifest(t, work, fmt.Sprintf("batch-%d.yaml", b), m.String())
		eventually(t, 2*time.Minute, time.Second, fmt.Sprintf("batch %d applied", b), func() error {
			if r := s.cli(nil, "apply", "--wait", "0", "-f", file); r.code != 0 {
				return errors.New(r.String())
			}
			return nil
		})
		time.Sleep(2 * time.Second)
	}
	<-natsRestarted
	// The pipeline is still busy after the last apply: keep killing until
	// most pods run (or for two minutes), so that crashes hit every stage.
	chaosUntil := time.Now().Add(2 * time.Minute)
	for time.Now().Before(chaosUntil) {
		recs, err := podRecords(js)
		n := 0
		for _, r := range recs {
			if vmOn(r) {
				n++
			}
		}
		if err == nil && n >= total*9/10 {
			break
		}
		time.Sleep(3 * time.Second)
	}
	stopChaos()
	chaos.Wait()
	mu.Lock()
	kills, selfExits := 0, 0
	for _, sv := range svcs {
		if sv.p.exited() {
			sv.selfExits++
			startSvc(sv)
		}
		kills += sv.kills
		selfExits += sv.selfExits
	}
	mu.Unlock()
	t.Logf("chaos over after %s: %d SIGKILLs, %d exits by themselves, 1 NATS restart", time.Since(start).Round(time.Second), kills, selfExits)

	var records map[string]events.PodRecord // by uid
	var stuckNames []string                 // pods not running at the last look
	t.Cleanup(func() {
		// Registered after the services' cleanup, so it runs while their
		// logs are still there: what each service said about the pods
		// that never ran.
		if !t.Failed() || len(stuckNames) == 0 {
			return
		}
		for _, n := range serviceNames {
			t.Logf("%s on %v:\n%s", n, stuckNames, grepLog(filepath.Join(work, n+".log"), stuckNames, 25))
		}
		r := s.cli(nil, "events")
		t.Logf("their events:\n%s", grepLines(r.stdout+r.stderr, stuckNames, 40))
		r = s.cli(nil, "events", "--dlq")
		t.Logf("dead letters:\n%s", tailLines(r.stdout+r.stderr, 30))
	})
	eventually(t, 8*time.Minute, 3*time.Second, "every pod with its VM running", func() error {
		recs, err := podRecords(js)
		if err != nil {
			return err
		}
		records = recs
		phases := map[string]int{}
		var stuck, names []string
		for _, r := range recs {
			if r.Namespace == podsNS && vmOn(r) {
				phases["vm running"]++
			} else if r.Namespace == podsNS {
				phases[r.Phase]++
				if len(stuck) < 5 {
					stuck = append(stuck, describeStuck(r))
					names = append(names, r.Namespace+"/"+r.Name, r.UID)
				}
			}
		}
		stuckNames = names
		if phases["vm running"] != total {
			slices.Sort(stuck)
			return fmt.Errorf("phases %v; not running: %s", phases, strings.Join(stuck, "; "))
		}
		return nil
	})
	t.Logf("all %d pods with their VM running %s after the first apply", total, time.Since(start).Round(time.Second))

	// Leftovers of killed handlers are the periodic resyncs' job: give them
	// their period to converge, then require zero.
	var c convergence
	eventually(t, 3*time.Minute, 5*time.Second, "nothing lost, duplicated or leaked", func() error {
		recs, err := podRecords(js)
		if err != nil {
			return err
		}
		records = recs
		c, err = measure(context.Background(), vc, js, records)
		if err != nil {
			return err
		}
		if !c.zero() {
			return errors.New(c.String())
		}
		return nil
	})
	t.Logf("%s", c.String())
	fmt.Printf("crash convergence: pods=%d vm_running=%d lost=%d duplicate_vms_by_name=%d duplicate_vms_by_uid=%d orphan_vms=%d orphan_disks=%d leaked_ips=%d leaked_ledger=%d kills=%d nats_restarts=1\n",
		total, c.running, c.lost, c.dupName, c.dupUID, c.orphanVMs, c.orphanDisks, c.leakedIPs, c.leakedLedger, kills)
}

// convergence counts what a crash could have lost, doubled or leaked.
type convergence struct {
	pods, running, lost                        int
	vms, dupName, dupUID, orphanVMs            int
	diskDirs, orphanDisks                      int
	ips, leakedIPs, ledgerAllocs, leakedLedger int
	missingAllocs                              int
	details                                    []string
}

func (c convergence) zero() bool {
	return c.lost == 0 && c.dupName == 0 && c.dupUID == 0 && c.orphanVMs == 0 && c.orphanDisks == 0 &&
		c.leakedIPs == 0 && c.leakedLedger == 0 && c.missingAllocs == 0 && c.diskDirs > 0
}

func (c convergence) String() string {
	d := c.details
	if len(d) > 8 {
		d = append(d[:8], fmt.Sprintf("… %d more", len(c.details)-8))
	}
	return fmt.Sprintf("pods %d (VM running %d, lost %d); VMs %d (duplicates by name %d, by uid %d, orphans %d); pod disk folders %d (orphans %d); IPs %d (leaked %d); ledger allocations %d (leaked %d, missing %d)%s",
		c.pods, c.running, c.lost, c.vms, c.dupName, c.dupUID, c.orphanVMs, c.diskDirs, c.orphanDisks,
		c.ips, c.leakedIPs, c.ledgerAllocs, c.leakedLedger, c.missingAllocs, strings.Join(append([]string{""}, d...), "\n  "))
}

// podRecords reads the provisioner's pod records by uid.
// describeStuck names what a pod that does not run waits for, so that a
// failed run says where the pipeline stopped.
func describeStuck(r events.PodRecord) string {
	return fmt.Sprintf("%s (phase %s, reason %q, message %q, host %q, network host %q, refusals %d, images %d, ip %q)",
		r.Name, r.Phase, r.Reason, r.Message, r.Host, r.NetworkHost, len(r.NetworkRefusals), len(r.Images), r.IP)
}

// grepLog returns the last n lines of a log that name any of words.
func grepLog(path string, words []string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return grepLines(string(b), words, n)
}

// grepLines returns the last n lines of text that name any of words.
func grepLines(text string, words []string, n int) string {
	var hits []string
	for _, l := range strings.Split(text, "\n") {
		if slices.ContainsFunc(words, func(w string) bool { return strings.Contains(l, w) }) {
			hits = append(hits, l)
		}
	}
	return tailLines(strings.Join(hits, "\n"), n)
}

// tailLines returns the last n lines of text.
func tailLines(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func podRecords(js jetstream.JetStream) (map[string]events.PodRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]events.PodRecord{}
	err := eachKV(ctx, js, events.BucketPods, func(key string, v []byte) error {
		var r events.PodRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("pod record %s: %w", key, err)
		}
		out[r.UID] = r
		return nil
	})
	return out, err
}

func eachKV(ctx context.Context, js jetstream.JetStream, bucket string, f func(key string, v []byte) error) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			return nil
		}
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		if err := f(e.Key(), e.Value()); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// measure compares vSphere, the address book and the ledger with the pod
// records.
func measure(ctx context.Context, vc *vcenter, js jetstream.JetStream, records map[string]events.PodRecord) (convergence, error) {
	var c convergence
	detail := func(format string, args ...any) { c.details = append(c.details, fmt.Sprintf(format, args...)) }
	byVMName := map[string]events.PodRecord{}
	for _, r := range records {
		c.pods++
		if vmOn(r) {
			c.running++
		} else {
			c.lost++
			detail("pod %s/%s is %s: %s", r.Namespace, r.Name, r.Phase, r.Message)
		}
		byVMName[r.VMName] = r
	}

	snap, err := vc.read(ctx)
	if err != nil {
		return c, err
	}
	c.vms = len(snap.VMs)
	for name, n := range duplicatesByName(snap.VMs) {
		c.dupName += n - 1
		detail("VM name %s ×%d", name, n)
	}
	for uid, n := range duplicatesByUID(snap.VMs) {
		c.dupUID += n - 1
		detail("pod uid %s has %d VMs", uid, n)
	}
	for _, v := range snap.VMs {
		r, ok := records[v.UID()]
		if !ok || r.VMName != v.Name || r.VMRef != v.Ref {
			c.orphanVMs++
			detail("orphan VM %s (%s) on %s", v.Name, v.Ref, v.Host)
		}
	}

	dirs, err := vc.podDiskDirs(ctx)
	if err != nil {
		return c, err
	}
	c.diskDirs = len(dirs)
	for dir, disks := range dirs {
		if _, ok := byVMName[dir]; !ok {
			c.orphanDisks++
			detail("orphan disks %v", disks)
		}
	}

	ipOf := map[string]bool{} // network/ip of running pods
	for _, r := range records {
		for _, a := range r.Attachments {
			ipOf[a.Network+"/"+a.IP+"/"+r.UID] = true
		}
	}
	err = eachKV(ctx, js, events.BucketIPAM, func(key string, v []byte) error {
		if network, rest, ok := strings.Cut(key, ".pod."); ok {
			uid := strings.ReplaceAll(rest, "=", ".")
			if _, ok := records[uid]; !ok {
				c.leakedIPs++
				detail("address binding %s of network %s for a pod that does not exist", key, network)
			}
			return nil
		}
		if strings.Contains(key, ".fence.") {
			return nil // the allocation fence of a network, not an address
		}
		network, ip, err := events.ParseIPAllocationKey(key)
		if err != nil {
			return err
		}
		c.ips++
		var a events.IPAllocation
		if err := json.Unmarshal(v, &a); err != nil {
			return fmt.Errorf("ipam %s: %w", key, err)
		}
		if !ipOf[network+"/"+ip.String()+"/"+a.UID] {
			c.leakedIPs++
			detail("address %s/%s held by %s/%s (%s), which does not use it", network, ip, a.Namespace, a.Name, a.UID)
		}
		return nil
	})
	if err != nil {
		return c, err
	}

	allocs := map[string]int{}
	err = eachKV(ctx, js, events.BucketLedger, func(key string, v []byte) error {
		if events.IsPodBindingKey(key) {
			var b events.PodBinding
			if err := json.Unmarshal(v, &b); err != nil {
				return fmt.Errorf("ledger %s: %w", key, err)
			}
			if r, ok := records[b.UID]; !ok || r.Host != b.Host {
				c.leakedLedger++
				detail("binding %s → %s for a pod not there", key, b.Host)
			}
			return nil
		}
		var e events.LedgerEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("ledger %s: %w", key, err)
		}
		for _, k := range e.Keys() {
			a := e.Allocations[k]
			c.ledgerAllocs++
			r, ok := records[a.UID]
			if a.Kind != events.AllocationPod || !ok || r.Host != e.Host {
				c.leakedLedger++
				detail("ledger allocation %s (%s %s/%s) on %s leaked", k, a.Kind, a.Namespace, a.Name, e.Host)
				continue
			}
			allocs[a.UID]++
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	uids := make([]string, 0, len(records))
	for uid := range records {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	for _, uid := range uids {
		if n := allocs[uid]; n != 1 {
			c.missingAllocs++
			detail("pod %s/%s has %d ledger allocations", records[uid].Namespace, records[uid].Name, n)
		}
	}
	return c, nil
}
