package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

// Streams besides the five domain streams of the event catalog
// (events.StreamPods, …): DLQ keeps dead letters; ADVISORIES keeps the
// server's MAX_DELIVERIES advisories, which are core NATS messages and
// would be lost while no consumer process listens.
const (
	StreamDLQ        = "DLQ"
	StreamAdvisories = "ADVISORIES"
)

// DLQSubjectPrefix starts every dead-letter subject: pv.dlq.<service>.
const DLQSubjectPrefix = "pv.dlq."

// maxDeliveriesAdvisoryPrefix is the subject prefix of the server advisory
// sent when a message runs out of deliveries: <prefix>.<stream>.<consumer>.
const maxDeliveriesAdvisoryPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"

// KV buckets, one per record type, each written by exactly one service
// (DESIGN "Ownership").
const (
	BucketPods       = "pods"
	BucketHosts      = "hosts"
	BucketLedger     = "ledger"
	BucketNetworks   = "networks"
	BucketNetHosts   = "net-hosts"
	BucketIPAM       = "ipam"
	BucketMigrations = "migrations"
	// BucketNetServices and BucketNetData are network-config's network
	// services (events.BucketNetServices) and pass-through data
	// (events.BucketNetData).
	BucketNetServices = "net-services"
	BucketNetData     = "net-data"
	// Native VMs: records, classes and images (the provisioner's native
	// VM controller writes them).
	BucketVMs       = events.BucketVMs
	BucketVMClasses = events.BucketVMClasses
	BucketVMImages  = events.BucketVMImages
	// BucketPodTemplates holds the provisioner's pod VM templates (the
	// parents pod VMs are instant-cloned from), one record per template.
	BucketPodTemplates = events.BucketPodTemplates
)

const (
	// DuplicateWindow is how long a stream remembers Nats-Msg-Id values. It
	// must outlast the longest retry horizon: a handler that publishes its
	// effect and then fails before acking is redelivered after its backoff
	// (DefaultBackOff over DefaultMaxDeliver deliveries sums to about four
	// minutes, plus handler time), and its replay republishes the same
	// deterministic id, which the stream drops only if it still remembers it.
	// Ten minutes covers that with room; the cost is one small index entry
	// per message for the window.
	DuplicateWindow = 10 * time.Minute
	// EventRetention bounds how long events stay in the domain streams. State
	// lives in KV buckets, so old events are history, not truth; a week lets
	// a person replay and trace recent flows.
	EventRetention = 7 * 24 * time.Hour
	// DLQRetention keeps dead letters long enough for a person to notice,
	// fix the cause and republish.
	DLQRetention = 30 * 24 * time.Hour
)

// Limits of what the streams and buckets hold. Every stream and bucket has
// a byte limit (the account requires one: see Authority), so a client that
// publishes without pause can push old events out of a stream but cannot
// fill the disk; and a maximum message size, so that one publish cannot
// carry more than an event.
const (
	// MaxMessageSize is the largest message a domain stream accepts: an
	// event's data (events.MaxEventSize, 64 KiB) and its CloudEvent
	// headers, with room to spare.
	MaxMessageSize = 70 << 10
	// DeadLetterMaxMessageSize leaves room for the reason headers a dead
	// letter adds to the original.
	DeadLetterMaxMessageSize = MaxMessageSize + 16<<10
	// BucketMaxBytes bounds each KV bucket.
	BucketMaxBytes = 256 << 20
	// BucketMaxValueSize bounds one record.
	BucketMaxValueSize = 1 << 20
)

// StreamMaxBytes is the byte limit of each stream. Pods carry most events
// (six or more per pod); old events go first when a stream is full
// (DiscardOld), since state lives in the buckets.
var StreamMaxBytes = map[string]int64{
	events.StreamPods:          1 << 30,
	events.StreamImages:        256 << 20,
	events.StreamNetworks:      256 << 20,
	events.StreamMigrations:    256 << 20,
	events.StreamHosts:         256 << 20,
	events.StreamVMs:           256 << 20,
	events.StreamGuestClusters: 256 << 20,
	StreamDLQ:                  256 << 20,
	StreamAdvisories:           64 << 20,
}

// StreamSubjects maps every stream of the topology to the subjects it captures.
func StreamSubjects() map[string][]string {
	out := map[string][]string{
		StreamDLQ:        {DLQSubjectPrefix + ">"},
		StreamAdvisories: {maxDeliveriesAdvisoryPrefix + ".>"},
	}
	for stream, subject := range events.StreamSubjects() {
		out[stream] = []string{subject}
	}
	return out
}

// bucketHistory is how many revisions each bucket keeps per key. Records
// that are replaced wholesale keep a few revisions for debugging; the ledger
// and IPAM are CAS counters where history is noise; networks keep the most
// NATS allows because every applied version is a snapshot to restore.
var bucketHistory = map[string]uint8{
	BucketPods:                 5,
	BucketHosts:                1,
	BucketLedger:               1,
	BucketNetworks:             64,
	BucketNetHosts:             5,
	BucketIPAM:                 1,
	BucketMigrations:           5,
	BucketNetServices:          5,
	BucketNetData:              5,
	events.BucketGuestClusters: 5,
	// One revision: an old kubeconfig is no one's business.
	events.BucketGuestClusterKubeconfigs: 1,
	BucketVMs:                            5,
	BucketVMClasses:                      5,
	BucketVMImages:                       5,
	BucketPodTemplates:                   5,
}

// Buckets lists the topology's KV buckets.
func Buckets() []string {
	return []string{BucketPods, BucketHosts, BucketLedger, BucketNetworks, BucketNetHosts, BucketIPAM, BucketMigrations,
		BucketNetServices, BucketNetData, BucketVMs, BucketVMClasses, BucketVMImages, events.BucketGuestClusters,
		events.BucketGuestClusterKubeconfigs, BucketPodTemplates}
}

// TopologyOption adjusts EnsureTopology.
type TopologyOption func(*topology)

type topology struct {
	replicas int
}

// WithReplicas sets the replica count of every stream and bucket (1 on a
// single server, 3 on a production cluster).
func WithReplicas(n int) TopologyOption {
	return func(t *topology) { t.replicas = n }
}

// EnsureTopology declares the streams and KV buckets every service relies on.
// It is idempotent and safe to run from every process at start-up: existing
// streams and buckets are updated in place to the declared configuration.
func (b *Bus) EnsureTopology(ctx context.Context, opts ...TopologyOption) error {
	t := topology{replicas: 1}
	for _, o := range opts {
		o(&t)
	}
	if t.replicas < 1 || t.replicas > 5 {
		return fmt.Errorf("bus: topology: replicas %d out of range 1-5", t.replicas)
	}
	var errs []error
	for _, name := range []string{events.StreamPods, events.StreamImages, events.StreamNetworks, events.StreamMigrations, events.StreamHosts,
		events.StreamVMs, events.StreamGuestClusters, StreamDLQ, StreamAdvisories} {
		cfg := jetstream.StreamConfig{
			Name:       name,
			Subjects:   StreamSubjects()[name],
			Retention:  jetstream.LimitsPolicy,
			Storage:    jetstream.FileStorage,
			Discard:    jetstream.DiscardOld,
			MaxAge:     EventRetention,
			Duplicates: DuplicateWindow,
			Replicas:   t.replicas,
			MaxBytes:   StreamMaxBytes[name],
			MaxMsgSize: MaxMessageSize,
		}
		switch name {
		case StreamDLQ:
			cfg.Description = "dead letters: pv.dlq.<service>, original headers and body plus Pv-Dlq-* reason headers"
			cfg.MaxAge = DLQRetention
			cfg.MaxMsgSize = DeadLetterMaxMessageSize
		case StreamAdvisories:
			cfg.Description = "MAX_DELIVERIES advisories, turned into dead letters by each consumer"
		default:
			cfg.Description = "podvisor events"
		}
		if _, err := b.js.CreateOrUpdateStream(ctx, cfg); err != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", name, err))
		}
	}
	for _, bucket := range Buckets() {
		cfg := jetstream.KeyValueConfig{
			Bucket:       bucket,
			History:      bucketHistory[bucket],
			Storage:      jetstream.FileStorage,
			Replicas:     t.replicas,
			MaxBytes:     BucketMaxBytes,
			MaxValueSize: BucketMaxValueSize,
		}
		if _, err := b.js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			errs = append(errs, fmt.Errorf("kv bucket %s: %w", bucket, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bus: topology: %w", err)
	}
	return nil
}
