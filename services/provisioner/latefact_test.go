package provisioner

import (
	"context"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
)

// A fact about a pod whose record a read does not find (a KV replica that
// has not caught up with the record's creation, after a NATS node restart)
// is read again on the next deliveries instead of being dropped: here the
// record is taken away while pod.scheduled is first handled and comes back
// after that delivery failed; the host still reaches the record.
func TestFactMeetingAMissingRecordIsReadAgain(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.BackOff = []time.Duration{500 * time.Millisecond}
	svc, _ := e.start(cfg)
	acc := e.request(testPod("late"))
	ctx := context.Background()
	key := events.PodRecordKey(acc.Namespace, acc.Name)
	recs := svc.recordsReady()
	rec := e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r != nil })
	if err := recs.remove(ctx, rec); err != nil {
		t.Fatal(err)
	}

	consumer, err := e.Bus.JetStream().Consumer(ctx, events.StreamPods, "provisioner-PODS")
	if err != nil {
		t.Fatal(err)
	}
	redelivered := func() int {
		ci, err := consumer.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return ci.NumRedelivered
	}
	before := redelivered()
	host := e.DC.Hosts()[0].Name
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: acc.PodRef, Host: host, Cluster: simtest.ClusterOf(t, e.DC, host),
		Datastores: []string{sim.SharedDatastore},
	})
	e.EventuallyWithin("pod.scheduled redelivered after its record was not found", 5*time.Second, func() bool {
		return redelivered() > before
	})
	rec.ResourceVersion = 0
	if err := recs.create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	recs.forget(key)
	e.waitRecord(svc, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r != nil && r.Host == host })
}
