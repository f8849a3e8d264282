package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// View is the page's read model: it watches the KV buckets the page shows
// (each change lands here within milliseconds, with no polling of NATS per
// page view), lists the image cache every few seconds, samples pods per
// phase for the chart and keeps the latest events for the feed.
type View struct {
	mu       sync.Mutex
	version  uint64 // bumps on every change a page would show
	buckets  map[string]map[string][]byte
	images   []events.ImageRecord
	history  []phaseSample
	feed     []FeedEvent
	feedSubs map[chan FeedEvent]struct{}
}

// phaseSample is one point of the pods-per-phase chart.
type phaseSample struct {
	Time   time.Time      `json:"t"`
	Phases map[string]int `json:"phases"`
}

// FeedEvent is one line of the live event feed.
type FeedEvent struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Subject string    `json:"subject"`
	Source  string    `json:"source"`
}

const (
	historyLen = 300 // samples: ten minutes at one every two seconds
	feedLen    = 100
)

// viewBuckets are the records the page shows and feedStreams carry the
// events of the feed (dead letters and advisories are for `podvisor events
// --dlq`): exactly what the dashboard identity may read.
var viewBuckets, feedStreams = func() ([]string, []string) {
	id, err := bus.LookupIdentity(bus.IdentityDashboard)
	if err != nil {
		panic(err)
	}
	return id.Reads, id.Watches
}()

func NewView() *View {
	v := &View{buckets: map[string]map[string][]byte{}, feedSubs: map[chan FeedEvent]struct{}{}}
	for _, b := range viewBuckets {
		v.buckets[b] = map[string][]byte{}
	}
	return v
}

// ImageLister lists the image cache's images (the image cache's Redis
// metadata, read-only).
type ImageLister func(ctx context.Context) ([]events.ImageRecord, error)

// Run starts keeping the view current until ctx ends: it returns once the
// watches and consumers are in place, or with the error that kept one from
// starting (a permissions violation names the subject refused). images may
// be nil: the page then shows no image chains.
func (v *View) Run(ctx context.Context, b *bus.Bus, images ImageLister) error {
	for _, name := range viewBuckets {
		kv, err := b.KV(ctx, name)
		if err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			return fmt.Errorf("watch bucket %s: %w", name, err)
		}
		go func() {
			defer w.Stop()
			for e := range w.Updates() {
				if e == nil {
					continue
				}
				v.mu.Lock()
				if e.Operation() == jetstream.KeyValuePut {
					v.buckets[name][e.Key()] = e.Value()
				} else {
					delete(v.buckets[name], e.Key())
				}
				v.version++
				v.mu.Unlock()
			}
		}()
	}
	// Ordered push consumers deliver to this connection's inbox: the
	// identity may create them but not pull from (nor ack on, nor delete)
	// anyone's consumer. The feed opens with the last minute, then follows.
	quietConsumerDeletes(b.Conn())
	js, err := b.Conn().JetStream()
	if err != nil {
		return err
	}
	subjects := bus.StreamSubjects()
	for _, stream := range feedStreams {
		start := time.Now().Add(-time.Minute)
		sub, err := js.Subscribe(subjects[stream][0], func(m *nats.Msg) {
			ev, err := bus.DecodeMessage(m)
			if err != nil {
				return
			}
			at := ev.Time() // optional in CloudEvents: else when it was stored
			if md, err := m.Metadata(); at.IsZero() && err == nil {
				at = md.Timestamp
			}
			v.addFeed(FeedEvent{Time: at, Type: shortType(ev.Type()), Subject: ev.Subject(), Source: ev.Source()})
		}, nats.BindStream(stream), nats.OrderedConsumer(), nats.StartTime(start), nats.Context(ctx))
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", stream, err)
		}
		go func() { <-ctx.Done(); sub.Unsubscribe() }()
	}
	go v.sample(ctx, images)
	return nil
}

// quietConsumerDeletes drops the refusals of the view's own consumer
// deletes from nc's error reports: a watch that stops (or resets) asks to
// delete its ordered consumer, which the dashboard identity may not do; the
// server removes the consumer once it is inactive. Other errors are
// reported as before.
func quietConsumerDeletes(nc *nats.Conn) {
	prev := nc.ErrorHandler()
	nc.SetErrorHandler(func(c *nats.Conn, sub *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `Publish to "$JS.API.CONSUMER.DELETE.`) {
			return
		}
		if prev != nil {
			prev(c, sub, err)
		}
	})
}

// shortType drops the catalog's prefix and version: pod.running.
func shortType(t string) string {
	t = strings.TrimPrefix(t, "io.podvisor.")
	if i := strings.LastIndex(t, ".v"); i > 0 {
		t = t[:i]
	}
	return t
}

func (v *View) addFeed(e FeedEvent) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.feed = append(v.feed, e)
	sort.SliceStable(v.feed, func(i, j int) bool { return v.feed[i].Time.Before(v.feed[j].Time) })
	if len(v.feed) > feedLen {
		v.feed = v.feed[len(v.feed)-feedLen:]
	}
	for ch := range v.feedSubs {
		select {
		case ch <- e:
		default: // a slow page misses a line rather than stalling the feed
		}
	}
}

// subscribe returns the recent feed and a channel of what follows.
func (v *View) subscribe() ([]FeedEvent, chan FeedEvent, func()) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ch := make(chan FeedEvent, 64)
	v.feedSubs[ch] = struct{}{}
	return append([]FeedEvent(nil), v.feed...), ch, func() {
		v.mu.Lock()
		delete(v.feedSubs, ch)
		v.mu.Unlock()
	}
}

// sample records pods per phase every two seconds and refreshes the images.
func (v *View) sample(ctx context.Context, images ImageLister) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if images != nil {
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			imgs, err := images(ictx)
			cancel()
			if err == nil {
				v.mu.Lock()
				if !sameImages(v.images, imgs) {
					v.images = imgs
					v.version++
				}
				v.mu.Unlock()
			}
		}
		v.mu.Lock()
		phases := map[string]int{}
		for _, raw := range v.buckets[events.BucketPods] {
			var rec struct {
				Phase string `json:"phase"`
			}
			if json.Unmarshal(raw, &rec) == nil {
				phases[rec.Phase]++
			}
		}
		v.history = append(v.history, phaseSample{Time: time.Now().UTC(), Phases: phases})
		if len(v.history) > historyLen {
			v.history = v.history[len(v.history)-historyLen:]
		}
		v.version++
		v.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sameImages(a, b []events.ImageRecord) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// Dashboard is what the page shows; GET /api/state returns it as JSON.
type Dashboard struct {
	Now        time.Time            `json:"now"`
	NATS       string               `json:"nats"`
	Registry   string               `json:"registry"`
	Hosts      []DashHost           `json:"hosts"`
	Pods       []DashPod            `json:"pods"`
	Networks   []DashNetwork        `json:"networks"`
	Images     []events.ImageRecord `json:"images"`
	Migrations []DashMigration      `json:"migrations"`
	History    []phaseSample        `json:"history"`
}

// DashHost is a host with its allocation.
type DashHost struct {
	Name        string `json:"name"`
	Cluster     string `json:"cluster"`
	State       string `json:"state"`
	CPUMilli    int64  `json:"cpuMilli"`
	CPUCapMilli int64  `json:"cpuCapMilli"`
	Memory      int64  `json:"memory"`
	MemoryCap   int64  `json:"memoryCap"`
	Pods        int    `json:"pods"`
}

// DashPod is a pod's place and state.
type DashPod struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Phase     string    `json:"phase"`
	Host      string    `json:"host"`
	IP        string    `json:"ip"`
	Created   time.Time `json:"created"`
	Reason    string    `json:"reason,omitempty"`
}

// DashNetwork is a network and the hosts that carry it.
type DashNetwork struct {
	Name   string `json:"name"`
	VLAN   int    `json:"vlan"`
	CIDR   string `json:"cidr"`
	Status string `json:"status"`
	// Ready and Scope count the hosts that carry the network and those in
	// its scope.
	Ready int `json:"ready"`
	Scope int `json:"scope"`
	IPs   int `json:"ipsUsed"`
}

// DashMigration is a migration and how far it got.
type DashMigration struct {
	ID      string `json:"id"`
	Pod     string `json:"pod"`
	From    string `json:"from"`
	To      string `json:"to"`
	Phase   string `json:"phase"`
	Percent int    `json:"percent"`
	Reason  string `json:"reason,omitempty"`
}

// Snapshot is what the page shows now, and a version that changes with it.
func (v *View) Snapshot() (Dashboard, uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	d := Dashboard{Now: time.Now().UTC(), Hosts: []DashHost{}, Pods: []DashPod{}, Networks: []DashNetwork{}, Migrations: []DashMigration{}}
	for _, raw := range v.buckets[events.BucketHosts] {
		var r events.HostRecord
		if json.Unmarshal(raw, &r) != nil {
			continue
		}
		d.Hosts = append(d.Hosts, DashHost{Name: r.Name, Cluster: r.Cluster, State: r.State(),
			CPUMilli: r.AllocatedCPUMilli, CPUCapMilli: r.CPUCapacityMilli, Memory: r.AllocatedMemoryBytes, MemoryCap: r.MemoryCapacityBytes, Pods: r.Pods})
	}
	sort.Slice(d.Hosts, func(i, j int) bool { return d.Hosts[i].Name < d.Hosts[j].Name })
	for _, raw := range v.buckets[events.BucketPods] {
		var r events.PodRecord
		if json.Unmarshal(raw, &r) != nil {
			continue
		}
		d.Pods = append(d.Pods, DashPod{Namespace: r.Namespace, Name: r.Name, Phase: r.Phase, Host: r.Host, IP: r.IP, Created: r.CreatedAt, Reason: r.Reason})
	}
	sort.Slice(d.Pods, func(i, j int) bool {
		if d.Pods[i].Namespace != d.Pods[j].Namespace {
			return d.Pods[i].Namespace < d.Pods[j].Namespace
		}
		return d.Pods[i].Name < d.Pods[j].Name
	})
	for _, raw := range v.buckets[events.BucketNetworks] {
		var r events.NetworkRecord
		if json.Unmarshal(raw, &r) != nil {
			continue
		}
		d.Networks = append(d.Networks, DashNetwork{Name: r.Name, VLAN: r.Spec.VLAN, CIDR: r.Spec.CIDR, Status: r.Status,
			Ready: r.HostsReady, Scope: r.HostsInScope, IPs: r.IPsUsed})
	}
	sort.Slice(d.Networks, func(i, j int) bool { return d.Networks[i].Name < d.Networks[j].Name })
	for key, raw := range v.buckets[events.BucketMigrations] {
		if key == events.MigrationLeaderKey {
			continue
		}
		var r events.MigrationRecord
		if json.Unmarshal(raw, &r) != nil {
			continue
		}
		d.Migrations = append(d.Migrations, DashMigration{ID: r.ID, Pod: r.Namespace + "/" + r.Pod, From: r.SourceHost, To: r.TargetHost,
			Phase: r.Phase, Percent: r.Percent, Reason: r.Reason})
	}
	sort.Slice(d.Migrations, func(i, j int) bool { return d.Migrations[i].ID < d.Migrations[j].ID })
	d.Images = append([]events.ImageRecord{}, v.images...)
	d.History = append([]phaseSample{}, v.history...)
	return d, v.version
}
