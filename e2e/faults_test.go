//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// The fault-injection run (in the manner of Jepsen and etcd's failpoints):
// `podvisor up --nats-nodes 3 --replicas 2 --vcenter-faults 0.05`, then pod
// requests, migrations, deletions and drains while, every few seconds, a
// random service process is SIGKILLed or SIGSTOPped and continued, and a
// NATS node is killed (one at a time: the other two keep quorum) and comes
// back. Afterwards every acknowledged request is checked through clients
// of our own (govmomi for vCenter, a plain JetStream client for records):
// exactly one pod with exactly one VM, or a clear failure; no orphan VM; per
// host, the ledger holds exactly the pods whose VMs run there, at their
// sizes; no leaked or duplicated address; no pod, migration or drain
// unsettled 60 s after the faults stop; and every invariant holding within
// eight minutes (the convergence time is reported).
//
// Its size comes from the environment (make test-faults sets the full run):
//
//	PODVISOR_FAULTS_PODS        pod requests (default 40)
//	PODVISOR_FAULTS_MIGRATIONS  migrations (default 6)
//	PODVISOR_FAULTS_DELETES     deletions (default 8)
//	PODVISOR_FAULTS_DRAINS      host drains (default 1)
//	PODVISOR_FAULTS_DURATION    soak: keep the faults and a steady churn going
//	                            this long, sampling memory and goroutines
//	PODVISOR_FAULTS_REPORT      file to write the result table to
//	PODVISOR_FAULTS_LOGS        directory to copy up's log and every
//	                            process's log to at the end
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection run takes minutes")
	}
	plan := faultPlan{
		pods: envInt(t, "PODVISOR_FAULTS_PODS", 40), migrations: envInt(t, "PODVISOR_FAULTS_MIGRATIONS", 6),
		deletes: envInt(t, "PODVISOR_FAULTS_DELETES", 8), drains: envInt(t, "PODVISOR_FAULTS_DRAINS", 1),
	}
	if v := os.Getenv("PODVISOR_FAULTS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PODVISOR_FAULTS_DURATION=%q: %v", v, err)
		}
		plan.soak = d
	}
	// A vMotion in the simulator takes moments: one still running after
	// two minutes will not end, and the migration service gives it up then
	// (cancelled, the migration ended by where its VM is) rather than after
	// the ten minutes a real one may take, which would outlast the run's
	// eight-minute convergence bound.
	s := startUpEnv(t, []string{"PODVISOR_MIGRATION_TIMEOUT=2m"}, "--nats-nodes", "3", "--replicas", "2", "--vcenter-faults", "0.05",
		"--clusters", "2", "--hosts-per-cluster", "8")
	if keep := os.Getenv("PODVISOR_FAULTS_LOGS"); keep != "" {
		// Cleanups run last-in first-out: this one before up stops and its
		// state dir goes.
		t.Cleanup(func() { keepLogs(t, s.dir, keep) })
	}
	vc := connectVCenter(t, s.env["GOVC_URL"])
	// The auditor reads every bucket: the admin identity up minted.
	opts := append(s.natsOpts(), nats.UserCredentials(filepath.Join(s.dir, "nats-auth", "admin.creds")))
	_, js := connectNATS(t, s.env["PODVISOR_NATS_URL"], opts...)
	r := &faultRun{t: t, s: s, js: js, plan: plan, procs: filepath.Join(s.dir, "procs"),
		faults: map[string]int{}, acked: map[string]bool{}, deleted: map[string]bool{}}

	ctx, stopFaults := context.WithCancel(context.Background())
	var chaos sync.WaitGroup
	chaos.Go(func() { r.inject(ctx) })
	var sampler sync.WaitGroup
	sampleCtx, stopSampling := context.WithCancel(context.Background())
	sampler.Go(func() { r.sample(sampleCtx) })

	began := time.Now()
	r.workload()
	if plan.soak > 0 {
		r.churn(plan.soak)
	}
	// Let the faults hit every stage of the last requests too: keep them
	// going until most requests have settled, or two minutes.
	until := time.Now().Add(2 * time.Minute)
	for time.Now().Before(until) {
		if settled, total := r.settled(); total > 0 && settled*10 >= total*9 {
			break
		}
		time.Sleep(3 * time.Second)
	}
	stopFaults()
	chaos.Wait()
	r.continueAll()
	faultsStopped := time.Now()
	t.Logf("faults stopped %s after the first request", faultsStopped.Sub(began).Round(time.Second))

	// Convergence: the first moment every invariant holds.
	var a audit
	var converged time.Duration
	deadline := faultsStopped.Add(8 * time.Minute)
	lastLog := time.Now()
	stuck := -1 // pods (and migrations, drains) unsettled 60 s after the faults
	for {
		var err error
		a, err = r.check(context.Background(), vc)
		if err == nil && stuck < 0 && time.Since(faultsStopped) >= 60*time.Second {
			stuck = a.pending + a.undeleted + a.activeMigrations
		}
		if err == nil && a.violations() == 0 {
			converged = time.Since(faultsStopped)
			break
		}
		if time.Since(lastLog) > 30*time.Second {
			lastLog = time.Now()
			t.Logf("not converged yet (%s after the faults): %v %s", time.Since(faultsStopped).Round(time.Second), err, a.String())
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Errorf("audit: %v", err)
			}
			converged = -1
			break
		}
		time.Sleep(3 * time.Second)
	}
	// Nothing may stay unsettled a minute after the faults stop.
	a.stuck = max(stuck, 0)
	stopSampling()
	sampler.Wait()
	table := r.table(a, converged, faultsStopped.Sub(began))
	fmt.Print(table)
	if p := os.Getenv("PODVISOR_FAULTS_REPORT"); p != "" {
		if err := os.WriteFile(p, []byte(table), 0o644); err != nil {
			t.Errorf("write report: %v", err)
		}
	}
	if converged < 0 || a.violations() > 0 || a.stuck > 0 {
		r.dumpGoroutines("migration-")
		t.Fatalf("invariants violated:\n%s", a.String())
	}
	r.checkReplicated(3)
}

// dumpGoroutines makes the service processes whose names begin with
// prefix write every goroutine's stack to their logs (SIGQUIT; up starts
// them again), so that a run that did not converge shows where each one
// waited. PODVISOR_FAULTS_LOGS keeps the logs.
func (r *faultRun) dumpGoroutines(prefix string) {
	var dumped []string
	for name, pid := range r.pids() {
		if strings.HasPrefix(name, prefix) && syscall.Kill(pid, syscall.SIGQUIT) == nil {
			dumped = append(dumped, name)
		}
	}
	sort.Strings(dumped)
	r.t.Logf("goroutine dumps requested (SIGQUIT) from %v: see their logs", dumped)
	time.Sleep(2 * time.Second) // the dump is written as the process exits
}

// checkReplicated fails the run for any stream or bucket held by fewer
// than nodes servers: the services' own buckets (drains, net-mgmt) as well
// as the shared topology's must survive the loss of a node.
func (r *faultRun) checkReplicated(nodes int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	infos, err := streamInfos(ctx, r.js)
	if err != nil {
		r.t.Errorf("list streams: %v", err)
		return
	}
	for _, info := range infos {
		if info.Config.Replicas < nodes {
			r.t.Errorf("stream %s has %d replicas on a %d-node cluster", info.Config.Name, info.Config.Replicas, nodes)
		}
	}
}

// streamInfos lists every stream (KV buckets are streams too). Listing
// none is an error: the system always has streams, so an empty list means
// the answer was lost, not that all is well.
func streamInfos(ctx context.Context, js jetstream.JetStream) ([]*jetstream.StreamInfo, error) {
	lister := js.ListStreams(ctx)
	var infos []*jetstream.StreamInfo
	for info := range lister.Info() {
		infos = append(infos, info)
	}
	if err := lister.Err(); err != nil {
		return nil, err
	}
	if len(infos) == 0 {
		return nil, errors.New("no stream listed")
	}
	return infos, nil
}

type faultPlan struct {
	pods, migrations, deletes, drains int
	soak                              time.Duration
}

// faultRun is the state of one run: what was asked and acknowledged, and
// what was injected.
type faultRun struct {
	t     *testing.T
	s     *system
	js    jetstream.JetStream
	plan  faultPlan
	procs string

	mu      sync.Mutex
	faults  map[string]int  // by kind
	acked   map[string]bool // pod names the CLI got admitted
	deleted map[string]bool // pod names whose delete was acknowledged
	ops     struct{ applied, migrations, migrationsAcked, deletes, drains, drainsAcked int }
	stopped map[int]bool // pids SIGSTOPped and not yet continued
	samples []string
}

const faultNS = "faults"

// workload submits the plan's requests: pods in batches, then migrations,
// deletions and drains interleaved, each through the CLI as a user would
// (retried while the bus is unreachable; a request counts once the CLI
// says it was taken).
func (r *faultRun) workload() {
	t := r.t
	pods := makePods(r.plan.pods, r.s.env["PODVISOR_REGISTRY"], []string{"default"})
	const batch = 50
	for b := 0; b*batch < len(pods); b++ {
		var m strings.Builder
		var names []string
		for _, p := range pods[b*batch : min((b+1)*batch, len(pods))] {
			m.WriteString(p.manifest(faultNS))
			names = append(names, p.name)
		}
		file := writeManifest(t, r.s.dir, fmt.Sprintf("faults-%d.yaml", b), m.String())
		eventually(t, 3*time.Minute, time.Second, fmt.Sprintf("batch %d applied", b), func() error {
			if res := r.s.cli(nil, "apply", "--wait", "0", "-f", file); res.code != 0 {
				return errors.New(res.String())
			}
			return nil
		})
		r.mu.Lock()
		for _, n := range names {
			r.acked[n] = true
		}
		r.ops.applied += len(names)
		r.mu.Unlock()
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 18))
	names := make([]string, 0, len(pods))
	for _, p := range pods {
		names = append(names, p.name)
	}
	rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	toDelete := names[:min(r.plan.deletes, len(names))]
	toMigrate := names[len(toDelete):min(len(toDelete)+r.plan.migrations, len(names))]
	hosts := r.hosts()
	drainEvery := 0
	if r.plan.drains > 0 {
		drainEvery = max(1, (len(toMigrate)+len(toDelete))/(r.plan.drains+1))
	}
	step, drained := 0, 0
	for i := 0; i < max(len(toMigrate), len(toDelete)); i++ {
		if i < len(toMigrate) {
			r.migrate(toMigrate[i])
			step++
		}
		if i < len(toDelete) {
			r.delete(toDelete[i])
			step++
		}
		if drainEvery > 0 && drained < r.plan.drains && step >= (drained+1)*drainEvery && drained < len(hosts) {
			r.drain(hosts[len(hosts)-1-drained])
			drained++
		}
	}
	for ; drained < r.plan.drains && drained < len(hosts); drained++ {
		r.drain(hosts[len(hosts)-1-drained])
	}
}

// churn keeps a steady load for the soak: a pod created and one deleted
// every few seconds.
func (r *faultRun) churn(d time.Duration) {
	until := time.Now().Add(d)
	for i := 0; time.Now().Before(until); i++ {
		name := fmt.Sprintf("soak-%05d", i)
		p := makePods(1, r.s.env["PODVISOR_REGISTRY"], []string{"default"})[0]
		p.name = name
		file := writeManifest(r.t, r.s.dir, "soak.yaml", p.manifest(faultNS))
		if res := r.s.cli(nil, "apply", "--wait", "0", "-f", file); res.code == 0 {
			r.mu.Lock()
			r.acked[name] = true
			r.ops.applied++
			r.mu.Unlock()
		}
		if i >= 10 {
			r.delete(fmt.Sprintf("soak-%05d", i-10))
		}
		time.Sleep(3 * time.Second)
	}
}

func (r *faultRun) migrate(name string) {
	r.mu.Lock()
	r.ops.migrations++
	r.mu.Unlock()
	// A pod not running yet is refused (NotScheduled), which is a clear
	// answer; what must hold is the pod's invariants whatever the answer.
	for range 20 {
		res := r.s.cli(nil, "migrate", "pod", name, "-n", faultNS, "--wait", "0")
		if res.code == 0 {
			r.mu.Lock()
			r.ops.migrationsAcked++
			r.mu.Unlock()
			return
		}
		time.Sleep(time.Second)
	}
}

func (r *faultRun) delete(name string) {
	for range 30 {
		res := r.s.cli(nil, "delete", "pod", name, "-n", faultNS)
		if res.code == 0 {
			r.mu.Lock()
			r.deleted[name] = true
			r.ops.deletes++
			r.mu.Unlock()
			return
		}
		time.Sleep(time.Second)
	}
	r.t.Logf("delete of %s never acknowledged", name)
}

func (r *faultRun) drain(host string) {
	r.mu.Lock()
	r.ops.drains++
	r.mu.Unlock()
	for range 30 {
		if res := r.s.cli(nil, "drain", "host", host, "--wait", "0"); res.code == 0 {
			r.mu.Lock()
			r.ops.drainsAcked++
			r.mu.Unlock()
			return
		}
		time.Sleep(time.Second)
	}
}

// hosts lists the simulated hosts by name.
func (r *faultRun) hosts() []string {
	var out []string
	eventually(r.t, time.Minute, time.Second, "host records", func() error {
		out = out[:0]
		err := eachKV(context.Background(), r.js, events.BucketHosts, func(key string, v []byte) error {
			var h events.HostRecord
			if err := json.Unmarshal(v, &h); err != nil {
				return err
			}
			out = append(out, h.Name)
			return nil
		})
		if err == nil && len(out) == 0 {
			err = errors.New("none yet")
		}
		return err
	})
	sort.Strings(out)
	return out
}

// pids reads up's pid files: process name → pid.
func (r *faultRun) pids() map[string]int {
	out := map[string]int{}
	entries, _ := os.ReadDir(r.procs)
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".pid")
		if !ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join(r.procs, e.Name()))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			out[name] = pid
		}
	}
	return out
}

// inject is the fault loop: every 2–4 s a random service process is
// SIGKILLed (up starts it again) or SIGSTOPped for 1–5 s; every sixth
// round a NATS node is SIGKILLed, once the previous one is back and every
// stream is whole again (the other two nodes keep the quorum).
func (r *faultRun) inject(ctx context.Context) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	lastNATS := ""
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(2000+rng.IntN(2000)) * time.Millisecond):
		}
		pids := r.pids()
		var svcs, nodes []string
		for n := range pids {
			if strings.HasPrefix(n, "nats-") {
				nodes = append(nodes, n)
			} else {
				svcs = append(svcs, n)
			}
		}
		sort.Strings(svcs)
		sort.Strings(nodes)
		if round%6 == 5 && len(nodes) == 3 && r.natsBack(lastNATS) {
			n := nodes[rng.IntN(len(nodes))]
			if syscall.Kill(pids[n], syscall.SIGKILL) == nil {
				lastNATS = n
				r.count("NATS node SIGKILL")
			}
			continue
		}
		if len(svcs) == 0 {
			continue
		}
		n := svcs[rng.IntN(len(svcs))]
		pid := pids[n]
		if rng.IntN(2) == 0 {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				r.count("service SIGKILL")
			}
			continue
		}
		if syscall.Kill(pid, syscall.SIGSTOP) == nil {
			r.count("service SIGSTOP/SIGCONT")
			r.mu.Lock()
			if r.stopped == nil {
				r.stopped = map[int]bool{}
			}
			r.stopped[pid] = true
			r.mu.Unlock()
			pause := time.Duration(1000+rng.IntN(4000)) * time.Millisecond
			time.AfterFunc(pause, func() { r.cont(pid) })
		}
	}
}

func (r *faultRun) cont(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped[pid] {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		delete(r.stopped, pid)
	}
}

// continueAll continues every process still stopped when the faults end.
func (r *faultRun) continueAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid := range r.stopped {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	r.stopped = nil
}

// natsBack reports whether the NATS node killed last has been started
// again by up and every stream and bucket has its quorum back: a leader,
// and every replica online and current (caught up with the leader's log
// recently, as NATS judges it; a replica still trailing by the writes of
// the last moments counts, since under load there always are some). Only
// then may another node go without the quorum of some stream going with it.
func (r *faultRun) natsBack(node string) bool {
	if node == "" {
		return true
	}
	if _, ok := r.pids()[node]; !ok {
		return false // not started again yet
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	infos, err := streamInfos(ctx, r.js)
	if err != nil {
		return false
	}
	for _, info := range infos {
		if !quorate(info) {
			return false
		}
	}
	return true
}

// quorate reports whether a replicated stream has its leader and every
// replica online and current.
func quorate(info *jetstream.StreamInfo) bool {
	c := info.Cluster
	if c == nil || c.Leader == "" || len(c.Replicas) < info.Config.Replicas-1 {
		return false
	}
	for _, p := range c.Replicas {
		if !p.Current || p.Offline {
			return false
		}
	}
	return true
}

func (r *faultRun) count(kind string) {
	r.mu.Lock()
	r.faults[kind]++
	r.mu.Unlock()
}

// settled counts the acknowledged pods that reached their end state.
func (r *faultRun) settled() (settled, total int) {
	recs, err := podRecords(r.js)
	if err != nil {
		return 0, 0
	}
	byName := map[string]events.PodRecord{}
	for _, rec := range recs {
		if rec.Namespace == faultNS {
			byName[rec.Name] = rec
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.acked {
		total++
		rec, ok := byName[name]
		switch {
		case r.deleted[name] && !ok:
			settled++
		case ok && !r.deleted[name] && (vmOn(rec) || rec.Phase == events.PodPhaseFailed):
			settled++
		}
	}
	return settled, total
}

// audit is what the independent clients found.
type audit struct {
	running, failed, deletedGone int
	pending                      int // not in an end state yet
	lost                         int // acknowledged, no record, not deleted
	undeleted                    int // delete acknowledged, still there
	dupVMs, orphanVMs            int
	wrongHost                    int // VM not where the record says
	ledgerMismatch               int // ledger allocations ≠ VMs (and sizes) per host
	leakedIPs, dupIPs            int
	activeMigrations             int
	stuck                        int
	details                      []string
}

func (a audit) violations() int {
	return a.pending + a.lost + a.undeleted + a.dupVMs + a.orphanVMs + a.wrongHost + a.ledgerMismatch +
		a.leakedIPs + a.dupIPs + a.activeMigrations
}

func (a audit) String() string {
	d := a.details
	if len(d) > 12 {
		d = append(d[:12:12], fmt.Sprintf("… %d more", len(a.details)-12))
	}
	return fmt.Sprintf("running %d, failed %d, deleted %d; pending %d, lost %d, undeleted %d, duplicate VMs %d, orphan VMs %d, VMs off their host %d, ledger mismatches %d, leaked IPs %d, duplicate IPs %d, unfinished migrations and drains %d%s",
		a.running, a.failed, a.deletedGone, a.pending, a.lost, a.undeleted, a.dupVMs, a.orphanVMs, a.wrongHost,
		a.ledgerMismatch, a.leakedIPs, a.dupIPs, a.activeMigrations, strings.Join(append([]string{""}, d...), "\n  "))
}

// check reads vCenter and every bucket and compares them with what was
// asked.
func (r *faultRun) check(ctx context.Context, vc *vcenter) (audit, error) {
	var a audit
	detail := func(format string, args ...any) { a.details = append(a.details, fmt.Sprintf(format, args...)) }
	recs, err := podRecords(r.js)
	if err != nil {
		return a, err
	}
	snap, err := vc.read(ctx)
	if err != nil {
		return a, err
	}
	vmsByUID := map[string][]podVM{}
	for _, v := range snap.VMs {
		vmsByUID[v.UID()] = append(vmsByUID[v.UID()], v)
	}
	byName := map[string]events.PodRecord{}
	for _, rec := range recs {
		if rec.Namespace == faultNS {
			byName[rec.Name] = rec
		}
	}
	r.mu.Lock()
	acked, deleted := make(map[string]bool, len(r.acked)), make(map[string]bool, len(r.deleted))
	for k := range r.acked {
		acked[k] = true
	}
	for k := range r.deleted {
		deleted[k] = true
	}
	r.mu.Unlock()
	for name := range acked {
		rec, ok := byName[name]
		switch {
		case deleted[name] && !ok:
			a.deletedGone++
		case deleted[name]:
			a.undeleted++
			detail("pod %s: delete acknowledged, record still %s", name, rec.Phase)
		case !ok:
			a.lost++
			detail("pod %s: acknowledged, no record", name)
		case rec.Phase == events.PodPhaseFailed:
			a.failed++
			if rec.Reason == "" || rec.Message == "" {
				a.pending++
				detail("pod %s failed without a reason", name)
			}
			if n := len(vmsByUID[rec.UID]); n != 0 {
				a.dupVMs += n
				detail("failed pod %s keeps %d VMs", name, n)
			}
		case vmOn(rec):
			a.running++
			vms := vmsByUID[rec.UID]
			switch {
			case len(vms) != 1:
				a.dupVMs += max(1, len(vms)-1)
				detail("pod %s has %d VMs", name, len(vms))
			case vms[0].Host != rec.Host || vms[0].Ref != rec.VMRef:
				a.wrongHost++
				detail("pod %s: VM %s on %s, record says %s on %s", name, vms[0].Ref, vms[0].Host, rec.VMRef, rec.Host)
			}
		default:
			a.pending++
			detail("pod %s is %s (%s)", name, rec.Phase, rec.Message)
		}
	}
	for uid, vms := range vmsByUID {
		rec, ok := recs[uid]
		if !ok || rec.Phase == events.PodPhaseFailed {
			a.orphanVMs += len(vms)
			detail("orphan VM %s (uid %s) on %s", vms[0].Name, uid, vms[0].Host)
		}
	}

	// Ledger: per host, exactly the pods whose VM runs there, each at its
	// size; nothing else (a migration's reservation outlives nothing).
	want := map[string]map[string]int64{} // host → uid → memory
	for _, rec := range recs {
		if !vmOn(rec) {
			continue
		}
		for _, v := range vmsByUID[rec.UID] {
			if want[v.Host] == nil {
				want[v.Host] = map[string]int64{}
			}
			// The VM's configured memory (whole MiB), or the pod's bytes
			// when larger: what the scheduler counts a pod VM as.
			want[v.Host][rec.UID] = max(int64(v.MemoryMB)<<20, rec.Size.MemoryBytes)
		}
	}
	got := map[string]map[string]int64{}
	err = eachKV(ctx, r.js, events.BucketLedger, func(key string, v []byte) error {
		if events.IsPodBindingKey(key) {
			return nil
		}
		var e events.LedgerEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("ledger %s: %w", key, err)
		}
		for k, al := range e.Allocations {
			if got[e.Host] == nil {
				got[e.Host] = map[string]int64{}
			}
			if al.Kind != events.AllocationPod {
				got[e.Host][k] = -1
				continue
			}
			got[e.Host][al.UID] = al.MemoryBytes
		}
		return nil
	})
	if err != nil {
		return a, err
	}
	for host := range union(want, got) {
		for uid := range union(want[host], got[host]) {
			w, inWant := want[host][uid]
			g, inGot := got[host][uid]
			if inWant != inGot || w != g {
				a.ledgerMismatch++
				detail("host %s: ledger has %s at %d bytes (held %v), its VM there: %v at %d", host, uid, g, inGot, inWant, w)
			}
		}
	}

	// Addresses: each held by a pod that has it, none twice.
	holder := map[string]string{}
	err = eachKV(ctx, r.js, events.BucketIPAM, func(key string, v []byte) error {
		if strings.Contains(key, ".pod.") || strings.Contains(key, ".fence.") {
			return nil
		}
		network, ip, err := events.ParseIPAllocationKey(key)
		if err != nil {
			return err
		}
		var al events.IPAllocation
		if err := json.Unmarshal(v, &al); err != nil {
			return fmt.Errorf("ipam %s: %w", key, err)
		}
		rec, ok := recs[al.UID]
		if !ok || !vmOn(rec) || rec.IP != ip.String() {
			a.leakedIPs++
			detail("address %s/%s held for %s, which does not use it", network, ip, al.UID)
		}
		return nil
	})
	if err != nil {
		return a, err
	}
	for _, rec := range recs {
		if !vmOn(rec) || rec.IP == "" {
			continue
		}
		if other, ok := holder[rec.IP]; ok {
			a.dupIPs++
			detail("address %s on pods %s and %s", rec.IP, other, rec.Name)
		}
		holder[rec.IP] = rec.Name
	}

	err = eachKV(ctx, r.js, events.BucketDrains, func(key string, v []byte) error {
		var d events.DrainRecord
		if err := json.Unmarshal(v, &d); err != nil {
			return fmt.Errorf("drain %s: %w", key, err)
		}
		if d.Phase == events.DrainPhaseDraining || d.Phase == events.DrainPhaseEnteringMaintenance {
			a.activeMigrations++
			detail("drain of %s still %s", d.Host, d.Phase)
		}
		return nil
	})
	if err != nil {
		return a, err
	}
	err = eachKV(ctx, r.js, events.BucketMigrations, func(key string, v []byte) error {
		var m events.MigrationRecord
		if json.Unmarshal(v, &m) != nil || m.ID == "" {
			return nil // the leader lease
		}
		if m.Active() {
			a.activeMigrations++
			task := ""
			if m.RelocateTask != "" {
				task = fmt.Sprintf("; vMotion task %s: %s", m.RelocateTask, vc.taskState(ctx, m.RelocateTask))
			}
			detail("migration %s of %s still %s %d%% (%s) from %s to %s, updated %s ago%s", m.ID, m.Key(), m.Phase, m.Percent,
				m.Message, m.SourceHost, m.TargetHost, time.Since(m.UpdatedAt).Round(time.Second), task)
		}
		return nil
	})
	return a, err
}

func union[V any](a, b map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// sample records, every 10 s, the resident memory and thread count of
// every process up supervises (and of up), and the goroutine count of
// every service process (go_goroutines on its /metrics, whose address it
// writes to <procs>/<name>.health), for the soak report.
func (r *faultRun) sample(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	start := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pids := r.pids()
		pids["up"] = r.s.up.cmd.Process.Pid
		names := make([]string, 0, len(pids))
		for n := range pids {
			names = append(names, n)
		}
		sort.Strings(names)
		var b strings.Builder
		fmt.Fprintf(&b, "%6s", time.Since(start).Round(time.Second))
		for _, n := range names {
			rss, threads := procStat(pids[n])
			fmt.Fprintf(&b, "  %s=%dMiB/%dt", n, rss>>20, threads)
			if g, ok := goroutines(filepath.Join(r.procs, n+".health")); ok {
				fmt.Fprintf(&b, "/%dg", g)
			}
		}
		r.mu.Lock()
		r.samples = append(r.samples, b.String())
		r.mu.Unlock()
	}
}

// goroutines reads go_goroutines from the /metrics of the process whose
// health address is in addrFile.
func goroutines(addrFile string) (int, bool) {
	b, err := os.ReadFile(addrFile)
	if err != nil {
		return 0, false
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + strings.TrimSpace(string(b)) + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err == nil
		}
	}
	return 0, false
}

// procStat reads a process's resident memory and thread count from /proc.
func procStat(pid int) (rss int64, threads int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "VmRSS":
			n, _ := strconv.ParseInt(f[0], 10, 64)
			rss = n << 10
		case "Threads":
			threads, _ = strconv.Atoi(f[0])
		}
	}
	return rss, threads
}

// table renders the run's result.
func (r *faultRun) table(a audit, converged, faultTime time.Duration) string {
	var vfaults map[string]int64
	if b, err := os.ReadFile(filepath.Join(r.s.dir, "vcenter-faults.json")); err == nil {
		_ = json.Unmarshal(b, &vfaults)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\nfault-injection run: 3 NATS nodes (R3), 2 processes per service, 2x8 hosts, %d CPUs, %s\n", runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	w := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "operations\t")
	fmt.Fprintf(w, "  pod requests acknowledged\t%d\n", r.ops.applied)
	fmt.Fprintf(w, "  migrations requested (acknowledged)\t%d (%d)\n", r.ops.migrations, r.ops.migrationsAcked)
	fmt.Fprintf(w, "  deletions acknowledged\t%d\n", r.ops.deletes)
	fmt.Fprintf(w, "  drains requested (acknowledged)\t%d (%d)\n", r.ops.drains, r.ops.drainsAcked)
	fmt.Fprintln(w, "faults injected\t")
	kinds := make([]string, 0, len(r.faults))
	for k := range r.faults {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %s\t%d\n", k, r.faults[k])
	}
	for _, m := range []string{"CreateVM_Task", "PowerOnVM_Task", "RelocateVM_Task"} {
		fmt.Fprintf(w, "  vCenter %s fault (p=0.05)\t%d\n", m, vfaults[m])
	}
	fmt.Fprintln(w, "outcome\t")
	fmt.Fprintf(w, "  pods with exactly one VM\t%d\n", a.running)
	fmt.Fprintf(w, "  pods failed with a reason\t%d\n", a.failed)
	fmt.Fprintf(w, "  pods deleted and gone\t%d\n", a.deletedGone)
	fmt.Fprintln(w, "invariant violations\t")
	for _, v := range []struct {
		what string
		n    int
	}{
		{"acknowledged request lost", a.lost}, {"pod not settled", a.pending}, {"deleted pod still there", a.undeleted},
		{"pod with more or fewer than one VM", a.dupVMs}, {"orphan VM", a.orphanVMs}, {"VM off its recorded host", a.wrongHost},
		{"ledger differs from the VMs per host", a.ledgerMismatch}, {"leaked IP", a.leakedIPs}, {"duplicated IP", a.dupIPs},
		{"migration or drain not finished", a.activeMigrations}, {"stuck > 60 s after faults stopped", a.stuck},
	} {
		fmt.Fprintf(w, "  %s\t%d\n", v.what, v.n)
	}
	fmt.Fprintf(w, "  total\t%d\n", a.violations()+a.stuck)
	fmt.Fprintf(w, "time under faults\t%s\n", faultTime.Round(time.Second))
	if converged >= 0 {
		fmt.Fprintf(w, "convergence after faults stopped\t%s\n", converged.Round(time.Second))
	} else {
		fmt.Fprintf(w, "convergence after faults stopped\tnot within 8m\n")
	}
	_ = w.Flush()
	if len(r.samples) > 0 {
		fmt.Fprintln(&b, "per process over time: resident memory / threads (t) / goroutines (g, service processes):")
		step := max(1, len(r.samples)/12)
		for i := 0; i < len(r.samples); i += step {
			fmt.Fprintln(&b, "  "+r.samples[i])
		}
	}
	return b.String()
}

// keepLogs copies up's log and its processes' logs (<state>/logs) to dir.
func keepLogs(t *testing.T, state, dir string) {
	logs, _ := filepath.Glob(filepath.Join(state, "logs", "*.log"))
	for _, f := range append(logs, filepath.Join(state, "up.log")) {
		b, err := os.ReadFile(f)
		if err == nil {
			err = os.MkdirAll(dir, 0o755)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644)
		}
		if err != nil {
			t.Logf("keep log %s: %v", f, err)
		}
	}
}

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a count", name, v)
	}
	return n
}
