package provisioner

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/sim"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/syncbuf"
)

// The 10:45 full run's p824: a pod Scheduled whose record never gathered
// every fact a VM needs (here network-config's attachment never comes), and
// drift repair drove on only pods that had them all. Past a resync
// interval without a change, drift repair asks the facts' owners again
// (pod.accepted announced again, as admission first asked them); two
// replicas asking at once publish one announcement between them, and the
// fact that then comes lets the pod go on.
func TestScheduledPodWithoutEveryFactIsAskedForThemAgain(t *testing.T) {
	e := newEnv(t)
	logs := &syncbuf.Buffer{}
	a, b := e.startLogged(testConfig(), logs), e.startLogged(testConfig(), logs)
	acc := e.request(testPod("waiting"))
	host := e.DC.Hosts()[0].Name
	e.Send("podvisor/scheduler", events.TypePodScheduled, &events.PodScheduled{
		PodRef: events.PodRef{Namespace: acc.Namespace, Name: acc.Name, UID: acc.UID}, Host: host, Cluster: simtest.ClusterOf(t, e.DC, host),
		Datastores: []string{sim.SharedDatastore},
	})
	e.Send("podvisor/imagecache", events.TypePodImagesReady, imagesReady(acc))
	rec := e.waitRecord(a, acc.Namespace, acc.Name, func(r *events.PodRecord) bool {
		return r != nil && r.Host == host && len(r.Images) == len(acc.Pod.Spec.Containers)
	})
	if got := missingFacts(rec); strings.Join(got, ",") != factNetworks {
		t.Fatalf("missing facts %v, want only %s", got, factNetworks)
	}
	// The logs say which facts came, at which revision, and what was
	// still missing after each.
	folded := jsonLines(logs, func(l map[string]any) bool { return l["msg"] == "fact folded" && l["uid"] == acc.UID })
	var last map[string]any
	for _, fact := range []string{events.TypePodScheduled, events.TypePodImagesReady} {
		found := false
		for _, l := range folded {
			found = found || l["fact"] == fact
			if rev, ok := l["revision"].(float64); ok && (last == nil || rev > last["revision"].(float64)) {
				last = l
			}
		}
		if !found {
			t.Fatalf("no info line for %s; logs:\n%s", fact, logs.String())
		}
	}
	if last["missing"] != factNetworks || last["key"] != acc.ObjectKey() {
		t.Errorf("the last fact's line: %v; want missing %s", last, factNetworks)
	}

	announced := func() []string {
		var ids []string
		for _, s := range e.Events.Distinct() {
			if p, ok := s.Payload.(*events.PodAccepted); ok && p.UID == acc.UID {
				ids = append(ids, s.Event.ID())
			}
		}
		return ids
	}
	if n := len(announced()); n != 1 {
		t.Fatalf("%d pod.accepted before any repair, want 1", n)
	}
	// A pass before the resync interval (1 s here) has gone by asks nothing.
	if rep, err := a.Resync(context.Background()); err != nil || rep[RepairAwaitingFacts] != 0 {
		t.Fatalf("first pass: %v, %v; want no ask yet", rep, err)
	}

	// Both replicas' passes, at once, until one of them asked.
	asked := 0
	e.EventuallyWithin("a replica asks again for the missing fact", 10*time.Second, func() bool {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, svc := range []*Service{a, b} {
			wg.Go(func() {
				rep, err := svc.Resync(context.Background())
				if err != nil {
					t.Errorf("resync: %v", err)
				}
				mu.Lock()
				asked += rep[RepairAwaitingFacts]
				mu.Unlock()
			})
		}
		wg.Wait()
		return asked > 0
	})
	if asked != 1 {
		t.Errorf("%d replicas asked again, want 1", asked)
	}
	e.EventuallyWithin("pod.accepted announced again", 5*time.Second, func() bool { return len(announced()) == 2 })
	rec = e.record(a, acc.Namespace, acc.Name)
	if rec.Phase != events.PodPhaseScheduled || !strings.Contains(rec.Message, "waiting for networks") {
		t.Errorf("after asking: phase %s, message %q", rec.Phase, rec.Message)
	}
	// The pass right after finds the pod asked for already.
	if rep, err := b.Resync(context.Background()); err != nil || rep[RepairAwaitingFacts] != 0 {
		t.Errorf("pass right after the ask: %v, %v; want none", rep, err)
	}

	// network-config answers the ask: the pod goes on to its VM.
	e.Send("podvisor/netconfig", events.TypePodNetworkAttached, networkAttached(acc, host))
	e.waitRecord(a, acc.Namespace, acc.Name, func(r *events.PodRecord) bool { return r != nil && r.VMRef != "" })
	if n := len(announced()); n != 2 {
		t.Errorf("%d pod.accepted in all, want 2 (admission and one ask)", n)
	}
}

// startLogged runs a provisioner whose logs (info and up, JSON) go to w.
func (e *env) startLogged(cfg Config, w *syncbuf.Buffer) *Service {
	e.T.Helper()
	log := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: log})
	if err != nil {
		e.T.Fatalf("new service: %v", err)
	}
	e.Run(Name, svc.Run)
	return svc
}

// jsonLines are the JSON log lines in b that satisfy pred.
func jsonLines(b *syncbuf.Buffer, pred func(map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && pred(m) {
			out = append(out, m)
		}
	}
	return out
}
