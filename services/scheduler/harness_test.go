package scheduler_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/services/scheduler/ledger"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// env is a scheduler running in the test environment (a real bus, a
// simulated vCenter, a recorder of every event); the test plays the other
// services (it publishes pod.accepted, writes the net-hosts and pods read
// models) and watches what the scheduler says.
type env struct {
	*testenv.Env
	svc *scheduler.Service
	led *ledger.Ledger

	opts envOptions
	stop func()
}

type envOptions struct {
	clusters, hostsPerCluster int
	cfg                       func(*scheduler.Config)
	// networks maps a network to the hosts it is realized on (nil = all).
	networks map[string][]string
	// redis, when set, is the image cache's Redis the scheduler reads.
	redis redis.UniversalClient
	// noRecorder leaves the event recorder out (benchmarks).
	noRecorder bool
}

func startEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	if o.clusters == 0 {
		o.clusters, o.hostsPerCluster = 2, 4
	}
	opts := []testenv.Option{testenv.Datacenter(sim.Config{Clusters: o.clusters, HostsPerCluster: o.hostsPerCluster, Seed: 42})}
	if o.noRecorder {
		opts = append(opts, testenv.NoRecorder())
	}
	te := testenv.Start(t, opts...)
	e := &env{Env: te, opts: o}
	if o.networks == nil {
		o.networks = map[string][]string{"default": nil}
	}
	for n, hosts := range o.networks {
		if hosts == nil {
			hosts = e.HostNames("")
		}
		e.PutNetwork(n, hosts, hosts)
	}
	e.led = ledger.New(te.KV(events.BucketLedger))
	e.stop = e.startScheduler()
	// Wait for the inventory to be in KV hosts: the scheduler is serving.
	e.EventuallyWithin("host records written", 15*time.Second, func() bool { return len(e.hostRecords()) == o.clusters*o.hostsPerCluster })
	return e
}

// startScheduler starts a scheduler instance on the env's bus and
// datacenter (with its own vCenter session, as another process would) and
// returns a function that stops it and waits (also run at cleanup).
func (e *env) startScheduler() (stop func()) {
	t := e.T
	t.Helper()
	session := simtest.Session(t, e.DC)
	cfg := scheduler.DefaultConfig()
	cfg.RetryInitial, cfg.RetryMax = 100*time.Millisecond, time.Second
	cfg.HostRecordInterval = 100 * time.Millisecond
	if e.opts.cfg != nil {
		e.opts.cfg(&cfg)
	}
	svc, err := scheduler.New(cfg, scheduler.Deps{Bus: e.Bus, VSphere: session, Redis: e.opts.redis, Logger: testenv.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	return e.Run(scheduler.Name, svc.Run)
}

func (e *env) hostRecords() map[string]events.HostRecord {
	out := map[string]events.HostRecord{}
	for _, r := range testenv.List[events.HostRecord](e.Env, events.BucketHosts) {
		out[r.Name] = *r
	}
	return out
}

// testPod is a pod manifest with one container of the given requests.
func testPod(name string, cpu, mem string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := testenv.Pod(name, "podvisor/base:1.0")
	p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
	for _, m := range mutate {
		m(p)
	}
	return p
}

// accept plays the provisioner admitting p: its record, then pod.accepted.
func (e *env) accept(p *corev1.Pod) *events.PodAccepted {
	e.T.Helper()
	acc := testenv.Accepted(p)
	e.Accept(acc)
	return acc
}

func podKey(name string) string { return events.PodKey("default", name) }
