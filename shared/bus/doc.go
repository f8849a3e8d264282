// Package bus is podvisor's messaging core: CloudEvents on NATS JetStream.
// Every service uses it to publish events, consume them with a keyed work
// queue, dead-letter what cannot be handled, read and write its KV buckets,
// and answer read-only queries.
//
// # Connecting and the topology
//
//	b, err := bus.Connect(ctx, os.Getenv("PODVISOR_NATS_URL"), nats.Name("podvisor-scheduler"))
//	err = b.EnsureTopology(ctx) // idempotent, every process runs it at start
//
// EnsureTopology declares the five domain streams (PODS pv.pod.>, IMAGES,
// NETWORKS, MIGRATIONS, HOSTS), DLQ (pv.dlq.>) and ADVISORIES, all on file
// storage with a DuplicateWindow of ten minutes, and the KV buckets pods,
// hosts, ledger, networks (64 versions per key), net-hosts, ipam and
// migrations. Package natsembed runs nats-server in-process for `podvisor
// up` and tests; a restart on the same Dir resumes streams and buckets.
//
// # Publishing
//
//	ev, _ := bus.NewEvent("podvisor/cli", events.TypePodRequested, "default/web", payload)
//	err := b.Publish(ctx, ev)
//
// Publish writes the event in the CloudEvents NATS binding's binary mode:
// attributes in lowercase ce-* headers (ce-specversion, ce-type, ce-source,
// ce-id, ce-subject, ce-time, extensions such as ce-traceparent), the data
// as the body with Content-Type: application/json. The NATS subject comes
// from the type (io.podvisor.pod.requested.v1 travels on pv.pod.requested).
// The Nats-Msg-Id header is the CloudEvent id and Publish waits for the
// stream's ack, so an event published twice within the window is stored
// once. Events over 64 KiB encoded are refused: they carry facts and keys;
// bulk belongs in a bucket or on a datastore.
//
// A handler's follow-up event is built with Effect, whose id is derived from
// the cause's id, the producer, the type and the subject. A handler that
// runs again for the same cause (it crashed after publishing but before
// acking) republishes the same id and the stream drops the copy. That is why
// DuplicateWindow must be longer than the longest retry horizon.
//
// DecodeMessage reads both binary mode and structured mode
// (Content-Type: application/cloudevents+json, the whole event as JSON), and
// a bare JSON CloudEvent with no headers, which is what `nats pub` sends
// unless told otherwise.
//
// # Consuming and the error model
//
//	err := b.Consume(ctx, bus.ConsumerConfig{
//		Service: "scheduler", Stream: events.StreamPods,
//		Subjects: []string{events.SubjectPodAccepted},
//		Workers: 8, AckWait: time.Minute,
//	}, func(ctx context.Context, m *bus.Message) error { … })
//
// Each service has one durable pull consumer per stream, named
// <service>-<stream>, with explicit acks. The handler's return value decides
// what happens to the message:
//
//   - nil: acked. The ack is not confirmed by the server: handlers are
//     idempotent, so an ack lost in flight only brings the event back to a
//     handler that finds its work done, and a confirmation per event cost
//     a round trip each.
//
//   - Permanent(err): copied to pv.dlq.<service> with err as the reason,
//     then terminated; never redelivered. Messages that are not CloudEvents
//     at all, have a type outside the catalog, or travel on another subject
//     than their type's go the same way before any handler sees them. A
//     later version of a catalog event (pod.accepted.v2 on pv.pod.accepted,
//     published beside .v1 during a migration) is acked and skipped by a
//     build that does not know it yet, as the events versioning rule says.
//
//   - RetryAfter(err, d): redelivered after d.
//
//   - any other error, or a panic: redelivered after BackOff[delivery-1]
//     (the last entry repeats).
//
//   - InProgress(err, d): the work goes on elsewhere; looked at again after
//     d, without being logged as a failure.
//
// Every error of every service carries one of these codes (CodeOf) and may
// carry a reason a person can act on (WithReason, ReasonOf): the
// CamelCase word failure events publish.
//
// # Typed handlers: the Router
//
// Services do not write Handlers by hand. They register one typed function
// per event with a Router, which decodes and validates the data
// (events.Decode; a failure is Permanent, so the message is dead-lettered
// with the field and the reason), sets the span attributes, scopes
// Message.Log, and runs the route's failure hook when the handler gives up:
//
//	r := bus.NewRouter("netconfig", log)
//	bus.Handle(r, s.onScheduled).OnFailure(s.attachFailed) // publishes pod.network.failed
//	err := r.Run(ctx, b, bus.ConsumerConfig{Workers: 8}, nil) // one durable per stream
//
// The hook runs when the error is Permanent or the delivery was the last,
// so a pod learns why its attach, pull or migration ended however it ended.
// A Permanent refusal whose failure event was published is acked: that
// event is its outcome. Deliveries that ran out are dead-lettered after the
// hook. A hook returns ErrNoFailureEvent for an error its domain does not
// tell about (the message is then settled by the error alone). OnInvalid
// answers an event that failed decoding (a request whose client waits)
// before it is dead-lettered. Work outside a delivery (a runner, a drain)
// retries with Retry, by the same codes. KeyLocks serializes a handler's work on an object that events with
// other keys also touch.
//
// # Emit
//
// A service publishes with one Emitter (b.Emitter("podvisor/netconfig")):
// Emit(ctx, cause, payload) takes the type and subject from the catalog and
// the payload, validates the payload, derives the effect id from the cause
// in the one way Effect does (Distinct tells apart several events of one
// type a cause has), and carries the cause's trace context.
//
// On the last delivery (MaxDeliver) a failure dead-letters the message with
// the reason "max deliveries exceeded: <last error>", after the route's
// failure hook has run. Messages whose deliveries
// ran out with no outcome at all (every process that took them crashed or
// hung) are caught from the server's MAX_DELIVERIES advisory. The server
// raises it when the consumer next pulls, that is from the next process of
// the service; the ADVISORIES stream keeps it until that process's capture
// consumer turns it into a dead letter, fetching the original by its stream
// sequence.
//
// The backoff is applied by the consumer through NakWithDelay rather than
// handed to the server as the consumer's BackOff: the server uses its
// BackOff list as the ack deadline of each delivery, replacing AckWait, so a
// one-second first step would give a vSphere task one second before
// redelivery. MaxDeliver must still exceed len(BackOff), the same rule the
// server enforces, because later entries could never apply.
//
// # The keyed work queue
//
// Handlers are level-triggered reconcilers keyed by object, so the consumer
// runs one handler per key at a time, in arrival order, and different keys
// in parallel on Workers goroutines. The key is the CloudEvent subject (the
// object key such as default/web) unless ConsumerConfig.Key says otherwise.
// The consumer fetches only as many messages as it has room for
// (MaxPending), and sends InProgress every AckWait/3 for every message it
// holds, running or queued behind a busy key, so neither is redelivered while
// this process still has it. The order holds within one process; replicas
// of a service share the durable and coordinate through KV compare-and-set,
// not through the bus.
//
// When its context ends Consume stops fetching, hands queued messages back
// to the server at once (Nak) so that another replica takes them, waits up
// to DrainTimeout for running handlers, then cancels their context and
// returns. Anything not acknowledged is redelivered after AckWait. Nothing
// is lost; at worst a handler runs twice, which its idempotence absorbs.
//
// # Dead letters
//
// A dead letter is the original message stored on pv.dlq.<service> in the
// DLQ stream (30 days): its CloudEvent headers and body unchanged, so it
// still decodes and can be republished as is, plus
//
//	Pv-Dlq-Reason       why (the handler's error, or what made it poison)
//	Pv-Dlq-Service      the service that gave up
//	Pv-Dlq-Consumer     the durable, <service>-<stream>
//	Pv-Dlq-Stream       the original stream
//	Pv-Dlq-Subject      the original NATS subject
//	Pv-Dlq-Stream-Seq   the original's sequence in its stream
//	Pv-Dlq-Deliveries   how many times it was delivered
//	Pv-Dlq-Time         when it was dead-lettered
//
// ReadDeadLetter parses them. ConsumerConfig.OnSettled is told of every
// settled message (type, outcome, time taken), for metrics. The copy is published (and acknowledged by the
// DLQ stream) before the original is terminated; if the copy fails, the
// original is retried instead. Its Nats-Msg-Id names the consumer and
// sequence, so the direct path and the advisory path never store it twice.
//
// # Trace propagation
//
// Two contexts travel with every event. The CloudEvents traceparent
// extension records the start of the flow: Publish sets it from the current
// span when the event has none, and Effect copies it from the cause, so a
// pod's trace from request to running has one root. The per-hop context goes
// in the NATS headers through otel's global propagator (W3C traceparent;
// plain trace-context if none is installed). Consume starts a consumer span
// per handler, named "<service> <ce-type>", whose parent is the hop context
// and which links to the flow start when the two differ; it carries ce.type,
// ce.id, ce.subject, ce.source, messaging.* attributes and the outcome
// (pv.outcome = ack, retry or dead-letter). An event published by a tool
// that set only ce-traceparent is parented on it directly.
//
// # Request and reply
//
// Serve and Request are for read-only queries a caller needs answered now
// (the CLI's get, the status page). Servers of a subject share a queue
// group named after it, so each request is answered once whatever the
// number of replicas; a handler's error comes back as ErrRemote. Anything
// that changes state is an event.
//
// # Why not sdk-go's JetStream protocol
//
// The CloudEvents SDK's protocol/nats_jetstream/v2 is built on the legacy
// push-consumer API, never acks in Finish, and creates streams as a side
// effect of opening a sender. The bus uses the SDK only for what it does
// well (the event type, validation, and the binding package's binary and
// structured encoders) and nats.go's jetstream package for transport, which
// gives pull consumers, explicit acks, InProgress, NakWithDelay and Term.
package bus
