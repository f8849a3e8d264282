package scheduler_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bustest"
)

// acceptedEvents builds n pod.accepted events of small pods (100m, 64Mi
// plus the pod VM overhead), so that a 16-host datacenter takes thousands.
func acceptedEvents(tb testing.TB, prefix string, n int) []event.Event {
	out := make([]event.Event, n)
	for i := range out {
		p := testPod(fmt.Sprintf("%s-%05d", prefix, i), "100m", "64Mi")
		acc := &events.PodAccepted{PodRef: events.PodRef{Namespace: p.Namespace, Name: p.Name, UID: "uid-" + p.Name}, Pod: *p,
			Size: events.SizePodVM(p), Networks: events.PodNetworks(p), Images: []string{p.Spec.Containers[0].Image}}
		ev, err := bus.NewEvent("podvisor/provisioner", events.TypePodAccepted, acc.ObjectKey(), acc)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = ev
	}
	return out
}

// pushAndWait publishes evs from 16 goroutines and returns the time until
// n pod.scheduled events were seen on b.
func pushAndWait(tb testing.TB, b *bus.Bus, evs []event.Event) time.Duration {
	var seen atomic.Int64
	all := make(chan struct{})
	n := int64(len(evs))
	sub, err := b.Conn().Subscribe(events.SubjectPodScheduled, func(*nats.Msg) {
		if seen.Add(1) == n {
			close(all)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer sub.Unsubscribe()
	b.Conn().Flush()
	start := time.Now()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if err := b.Publish(context.Background(), evs[i]); err != nil {
					tb.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		tb.Fatalf("only %d of %d pods scheduled", seen.Load(), n)
	}
	return time.Since(start)
}

// BenchmarkBusPath measures pods/s from pod.accepted published on the bus
// to pod.scheduled received, through the whole scheduler (consume, batch,
// framework, network availability query, ledger CAS, pod binding, publish)
// against a 16-host simulated datacenter, with network-config's answers
// played by the test and the host records written at the service's
// default interval. The baseline, measured in the same run on its own
// server, is the bus alone: a consumer with the same workers that decodes
// pod.accepted and publishes pod.scheduled without scheduling. The ratio
// (x-bus-only) says how much of the bus's throughput the scheduler keeps;
// cpu-µs/pod and bus-only-cpu-µs/pod are the process's CPU time per pod in
// each phase (publishers included in both), the figure that decides the
// ratio when the cores are busy.
//
//	go test -run '^$' -bench BusPath -benchtime 2000x .
func BenchmarkBusPath(b *testing.B) {
	e := startEnv(b, envOptions{clusters: 2, hostsPerCluster: 8, noRecorder: true, cfg: func(c *scheduler.Config) {
		c.HostRecordInterval = scheduler.DefaultConfig().HostRecordInterval
	}})
	e.answerAvailability(nil)
	evs := acceptedEvents(b, "bench", b.N)
	b.ResetTimer()
	c0 := cpuTime()
	d := pushAndWait(b, e.Bus, evs)
	c1 := cpuTime()
	b.StopTimer()
	rate := float64(b.N) / d.Seconds()

	base := bustest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		echo := bus.NewRouter("echo", nil)
		em := base.Emitter("podvisor/echo")
		bus.Handle(echo, func(ctx context.Context, m *bus.Message, acc *events.PodAccepted) error {
			return em.Emit(ctx, &m.Event, &events.PodScheduled{
				PodRef: acc.PodRef, Host: "esx-1-01", Cluster: "cluster-1"})
		})
		echo.Run(ctx, base, bus.ConsumerConfig{Workers: 512, MaxPending: 1024}, nil)
	}()
	bevs := acceptedEvents(b, "base", b.N)
	c2 := cpuTime()
	bd := pushAndWait(b, base, bevs)
	c3 := cpuTime()
	cancel()
	<-done
	baseline := float64(b.N) / bd.Seconds()
	b.ReportMetric(rate, "pods/s")
	b.ReportMetric(baseline, "bus-only-pods/s")
	b.ReportMetric(rate/baseline, "x-bus-only")
	b.ReportMetric(float64((c1-c0).Microseconds())/float64(b.N), "cpu-µs/pod")
	b.ReportMetric(float64((c3-c2).Microseconds())/float64(b.N), "bus-only-cpu-µs/pod")
}

// cpuTime is the CPU time this process has used (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
