package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/periodic"
)

// Consumer defaults.
const (
	DefaultWorkers      = 1
	DefaultAckWait      = 30 * time.Second
	DefaultMaxDeliver   = 10
	DefaultDrainTimeout = 30 * time.Second
)

// DefaultBackOff is the redelivery delay after the 1st, 2nd, … failed
// delivery; the last entry repeats. Over DefaultMaxDeliver deliveries it
// spans about four minutes, inside DuplicateWindow.
var DefaultBackOff = []time.Duration{
	1 * time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second,
}

// fetchWait bounds one pull request. Short enough that a consumer notices a
// deleted durable or a server restart quickly; long enough that an idle
// consumer costs one request every few seconds.
const fetchWait = 5 * time.Second

// ConsumerConfig describes one service's durable consumer on one stream.
type ConsumerConfig struct {
	// Service names the consumer: the durable is <Service>-<Stream> and dead
	// letters go to pv.dlq.<Service>. Lowercase letters, digits and dashes.
	Service string
	// Stream to consume (events.StreamPods, …).
	Stream string
	// Subjects filters the stream; empty means every subject of the stream.
	Subjects []string
	// Workers is how many handlers run at once (on different keys); default 1.
	Workers int
	// AckWait is how long the server waits for an outcome before it
	// redelivers; default 30s. Long handlers are kept alive with InProgress
	// every AckWait/3, so AckWait bounds how fast a crashed process's work
	// moves elsewhere, not how long a handler may run.
	AckWait time.Duration
	// MaxDeliver is how many deliveries a message gets before it is
	// dead-lettered; default 10, -1 for unlimited. Must exceed len(BackOff).
	MaxDeliver int
	// BackOff is the redelivery delay after each failed delivery (the last
	// entry repeats); default DefaultBackOff.
	BackOff []time.Duration
	// Key is the work-queue key of an event; default its CloudEvent subject
	// (the object key). Events with the same key are handled one at a time,
	// in arrival order.
	Key func(event.Event) string
	// MaxPending bounds the messages this process holds (running plus queued
	// behind a busy key); default 4×Workers.
	MaxPending int
	// DrainTimeout bounds how long Consume waits for running handlers after
	// its context ends; then their context is cancelled. Default 30s.
	DrainTimeout time.Duration
	// Logger receives the consumer's warnings; default discards.
	Logger *slog.Logger
	// OnSettled, if set, is told of every message the consumer settled
	// (the place for metrics). It runs on the worker: keep it quick.
	OnSettled func(Settled)
}

// Settled describes one handled message, for OnSettled.
type Settled struct {
	Durable  string
	Type     string // CloudEvent type
	Outcome  string // ack, retry, in-progress or dead-letter
	Delivery uint64
	Took     time.Duration // the handler's run
}

var (
	serviceName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	streamName  = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Durable is the name of the consumer's durable: <Service>-<Stream>.
func (c ConsumerConfig) Durable() string { return c.Service + "-" + c.Stream }

// withDefaults fills unset fields.
func (c ConsumerConfig) withDefaults() ConsumerConfig {
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = DefaultMaxDeliver
	}
	if c.BackOff == nil {
		c.BackOff = DefaultBackOff
		if c.MaxDeliver > 0 && len(c.BackOff) >= c.MaxDeliver {
			c.BackOff = c.BackOff[:c.MaxDeliver-1]
		}
	}
	if c.Key == nil {
		c.Key = func(ev event.Event) string { return ev.Subject() }
	}
	if c.MaxPending == 0 {
		c.MaxPending = 4 * c.Workers
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports every problem of the configuration, each naming its field.
// Zero values are valid: they stand for the defaults.
func (c ConsumerConfig) Validate() error {
	var errs []error
	if !serviceName.MatchString(c.Service) {
		errs = append(errs, fmt.Errorf("Service %q: want lowercase letters, digits and dashes, starting with a letter (it names the durable and the DLQ subject)", c.Service))
	}
	if !streamName.MatchString(c.Stream) {
		errs = append(errs, fmt.Errorf("Stream %q: want a stream name such as %s", c.Stream, events.StreamPods))
	}
	for i, s := range c.Subjects {
		if s == "" || strings.ContainsAny(s, " \t\r\n") || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
			errs = append(errs, fmt.Errorf("Subjects[%d] %q: not a valid NATS subject", i, s))
		}
	}
	if c.Workers < 0 {
		errs = append(errs, fmt.Errorf("Workers %d: must be at least 1 (0 for the default %d)", c.Workers, DefaultWorkers))
	}
	if c.AckWait < 0 || (c.AckWait > 0 && c.AckWait < 30*time.Millisecond) {
		errs = append(errs, fmt.Errorf("AckWait %s: must be at least 30ms (0 for the default %s)", c.AckWait, DefaultAckWait))
	}
	if c.MaxDeliver < -1 {
		errs = append(errs, fmt.Errorf("MaxDeliver %d: must be positive, -1 for unlimited or 0 for the default %d", c.MaxDeliver, DefaultMaxDeliver))
	}
	for i, d := range c.BackOff {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("BackOff[%d] %s: must be positive", i, d))
		}
	}
	// Delivery n that fails waits BackOff[n-1]; the last delivery is not
	// followed by a wait, so only MaxDeliver-1 entries can ever apply. The
	// server enforces the same rule for its own BackOff.
	md := c.MaxDeliver
	if md == 0 {
		md = DefaultMaxDeliver
	}
	if md > 0 && len(c.BackOff) >= md {
		errs = append(errs, fmt.Errorf("MaxDeliver %d: must be greater than len(BackOff) %d (entries past delivery %d would never be used)", md, len(c.BackOff), md-1))
	}
	if h := c.retryHorizon(md); h > DuplicateWindow {
		// A handler that published its effect and failed before acking
		// republishes it on a later delivery; the stream drops the copy
		// only while it remembers the id.
		errs = append(errs, fmt.Errorf("MaxDeliver %d with BackOff %v: retries span %s, longer than the streams' de-duplication window %s (a replayed effect could be stored twice)", md, c.BackOff, h, DuplicateWindow))
	}
	if c.MaxPending < 0 || (c.MaxPending > 0 && c.MaxPending < c.Workers) {
		errs = append(errs, fmt.Errorf("MaxPending %d: must be at least Workers (%d), or 0 for 4×Workers", c.MaxPending, c.Workers))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("DrainTimeout %s: must not be negative", c.DrainTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bus: consumer config: %w", err)
	}
	return nil
}

// retryHorizon is how long after its first delivery a message can be
// delivered again: the waits between md deliveries (0 when unlimited, which
// has no horizon to check).
func (c ConsumerConfig) retryHorizon(md int) time.Duration {
	if md <= 0 {
		return 0
	}
	bo := c.BackOff
	if bo == nil {
		bo = DefaultBackOff
	}
	cc := ConsumerConfig{BackOff: bo}
	var h time.Duration
	for n := 1; n < md; n++ {
		h += cc.Backoff(uint64(n))
	}
	return h
}

// Backoff is the delay before redelivering after failed delivery n
// (1-based): BackOff[n-1], the last entry repeating.
func (c ConsumerConfig) Backoff(n uint64) time.Duration {
	if len(c.BackOff) == 0 {
		return 0
	}
	i := int(min(n, uint64(len(c.BackOff)))) - 1
	return c.BackOff[max(i, 0)]
}

// Handler handles one event. Its error decides the outcome: nil acks,
// Permanent(err) dead-letters, RetryAfter(err, d) redelivers after d, any
// other error redelivers after the consumer's backoff.
type Handler func(ctx context.Context, m *Message) error

// Message is one delivery of an event to a handler.
type Message struct {
	Event event.Event
	// Key is the work-queue key the message ran under.
	Key string
	// Delivery counts deliveries of this message, 1 for the first.
	Delivery uint64
	// Stream and StreamSeq locate the message in JetStream.
	Stream    string
	StreamSeq uint64
	// Subject is the NATS subject it was published on.
	Subject string
	// Published is when JetStream stored it.
	Published time.Time
	// Log is the consumer's logger scoped with the event's type, key and
	// delivery: what a handler logs with.
	Log *slog.Logger

	msg        jetstream.Msg
	maxDeliver int
}

// InProgress tells the server the handler is still working, resetting the
// ack timer. The consumer already does this periodically; a handler may call
// it after a step that took long.
func (m *Message) InProgress() error { return m.msg.InProgress() }

// Raw is the underlying JetStream message, for headers the event does not
// carry. Do not ack it: the handler's return value does that.
func (m *Message) Raw() jetstream.Msg { return m.msg }

// LastDelivery reports whether this is the message's last delivery: if the
// handler fails now, the message is dead-lettered. A handler can use it to
// publish a failure event a person can act on before giving up.
func (m *Message) LastDelivery() bool {
	return m.maxDeliver > 0 && m.Delivery >= uint64(m.maxDeliver)
}

// delivery is a message held by a running consumer.
type delivery struct {
	m    *Message
	meta *jetstream.MsgMetadata
}

// consumer is the state of one Consume call.
type consumer struct {
	bus     *Bus
	cfg     ConsumerConfig
	durable string
	handler Handler
	log     *slog.Logger
	queue   *keyedQueue[delivery]
	metrics *consumerMetrics
}

// Consume runs handler on the events of one stream for one service until ctx
// ends. It creates or updates the durable <Service>-<Stream>, then fetches
// only as many messages as it has room for, runs them through a keyed work
// queue on cfg.Workers workers, settles each by the handler's outcome, and
// keeps every held message alive with InProgress. When ctx ends it stops
// fetching, returns queued messages to the server, waits up to DrainTimeout
// for running handlers, and returns nil. It returns an error only when it
// cannot start (bad configuration, missing stream) or the connection was
// closed under it.
func (b *Bus) Consume(ctx context.Context, cfg ConsumerConfig, handler Handler) error {
	if handler == nil {
		return errors.New("bus: consume: handler is nil")
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	c := &consumer{
		bus:     b,
		cfg:     cfg,
		durable: cfg.Durable(),
		handler: handler,
		log:     cfg.Logger.With("consumer", cfg.Durable(), "stream", cfg.Stream),
		queue:   newKeyedQueue[delivery](),
		metrics: newConsumerMetrics(cfg.Service, cfg.Durable()),
	}
	cons, err := c.ensureConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop before it started
		}
		return err
	}
	defer c.metrics.observePending(cons)()
	captured, err := b.captureMaxDeliveries(ctx, cfg.Service, cfg.Stream, c.durable, c.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	// Handlers outlive ctx by up to DrainTimeout so that work in flight at
	// shutdown can finish and ack instead of being redone elsewhere.
	hctx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()

	var workers sync.WaitGroup
	for range cfg.Workers {
		workers.Go(func() { c.work(hctx) })
	}
	// Held messages are kept alive until the drain below is over, past ctx.
	progressCtx, stopProgress := context.WithCancel(context.WithoutCancel(ctx))
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		periodic.Every(progressCtx, max(c.cfg.AckWait/3, 10*time.Millisecond), c.log, "keep held messages alive", c.keepAlive)
	}()

	fetchErr := c.fetchLoop(ctx, cons)

	// Shutdown: queued messages go back to the server at once (another
	// process of the service takes them); running ones get DrainTimeout.
	for _, d := range c.queue.close() {
		_ = d.m.msg.Nak()
		c.metrics.naked(d.m.Event.Type())
	}
	finished := make(chan struct{})
	go func() { workers.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(cfg.DrainTimeout):
		c.log.Warn("handlers still running after drain timeout; cancelling them", "timeout", cfg.DrainTimeout, "running", c.queue.len())
		cancelHandlers()
		select {
		case <-finished:
		case <-time.After(time.Second):
			// Whatever they hold is redelivered after AckWait.
		}
	}
	stopProgress()
	<-progressDone
	<-captured
	// Acks are buffered by the client: put the last ones on the wire before
	// the caller closes the connection (Close drains too; a process that
	// exits without it redoes that work, which handlers make harmless).
	if !b.nc.IsClosed() {
		_ = b.nc.FlushTimeout(time.Second)
	}
	return fetchErr
}

func (c *consumer) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	jc := jetstream.ConsumerConfig{
		Durable:     c.durable,
		Description: "podvisor " + c.cfg.Service + " on " + c.cfg.Stream,
		AckPolicy:   jetstream.AckExplicitPolicy,
		AckWait:     c.cfg.AckWait,
		MaxDeliver:  c.cfg.MaxDeliver,
		// BackOff is applied by the consumer with NakWithDelay, not given to
		// the server: a server BackOff replaces AckWait as the ack deadline
		// of each delivery, which would cut a long handler's time to the
		// first (short) backoff step.
		DeliverPolicy: jetstream.DeliverAllPolicy,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	switch len(c.cfg.Subjects) {
	case 0:
	case 1:
		jc.FilterSubject = c.cfg.Subjects[0]
	default:
		jc.FilterSubjects = c.cfg.Subjects
	}
	cons, err := c.bus.js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, jc)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("bus: consumer %s: stream %s does not exist (run EnsureTopology first): %w", c.durable, c.cfg.Stream, err)
		}
		return nil, fmt.Errorf("bus: consumer %s on %s: %w", c.durable, c.cfg.Stream, err)
	}
	return cons, nil
}

// fetchLoop pulls messages while there is room for them, until ctx ends or
// the connection is closed for good.
func (c *consumer) fetchLoop(ctx context.Context, cons jetstream.Consumer) error {
	retry := newRetryPause()
	for {
		room := c.queue.waitBelow(ctx, c.cfg.MaxPending)
		if room == 0 {
			return nil
		}
		fctx, cancel := context.WithTimeout(ctx, fetchWait)
		batch, err := cons.Fetch(room, jetstream.FetchContext(fctx))
		if err == nil {
			for m := range batch.Messages() {
				c.dispatch(ctx, m)
			}
			err = batch.Error()
		}
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if c.bus.nc.IsClosed() {
			return fmt.Errorf("bus: consumer %s: connection closed", c.durable)
		}
		switch {
		case err == nil, errors.Is(err, context.DeadlineExceeded), errors.Is(err, jetstream.ErrNoMessages):
			retry.reset()
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrConsumerDeleted):
			c.log.Warn("durable consumer disappeared; recreating it", "err", err)
			if fresh, err := c.ensureConsumer(ctx); err == nil {
				cons = fresh
			} else {
				c.log.Warn("recreate consumer", "err", err)
				retry.wait(ctx)
			}
		default:
			c.log.Warn("fetch", "err", err)
			retry.wait(ctx)
		}
	}
}

// dispatch decodes a fetched message and queues it under its key. A message
// that is not a CloudEvent of a known type is dead-lettered at once.
func (c *consumer) dispatch(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		c.log.Warn("message without JetStream metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Nak()
		return
	}
	m := &Message{
		Delivery:   meta.NumDelivered,
		Stream:     meta.Stream,
		StreamSeq:  meta.Sequence.Stream,
		Subject:    msg.Subject(),
		Published:  meta.Timestamp,
		msg:        msg,
		maxDeliver: c.cfg.MaxDeliver,
	}
	ev, err := DecodeMessage(msg)
	c.metrics.delivered(ev.Type(), m.Delivery)
	if err == nil {
		rt, rerr := routeOf(ev.Type())
		switch {
		case rerr != nil && laterVersion(ev.Type(), msg.Subject()):
			// A version this build does not know yet of an event it does:
			// its producer also publishes the version this build reads.
			c.log.Debug("skipping unknown version of a known event", "ce_type", ev.Type(), "seq", m.StreamSeq)
			_ = msg.Ack()
			c.metrics.acked(ev.Type())
			return
		case rerr != nil:
			err = rerr
		case !rt.carries(&ev, msg.Subject()):
			err = fmt.Errorf("type %s travels on subject %s, not %s", ev.Type(), rt.kind.SubjectFor(ev.Subject()), msg.Subject())
		case !events.SourceAllowed(ev.Type(), ev.Source()):
			// The server's permissions keep a service from publishing
			// another's facts; this catches one that arrived some other way.
			err = fmt.Errorf("%w: source %q may not publish %s (publishers: %s)", ErrForeignSource, ev.Source(), ev.Type(), strings.Join(events.Publishers(ev.Type()), ", "))
		}
	}
	if err != nil {
		c.deadLetter(ctx, &delivery{m: m, meta: meta}, err.Error())
		return
	}
	m.Event = ev
	m.Key = c.cfg.Key(ev)
	m.Log = c.log
	if !c.queue.add(m.Key, &delivery{m: m, meta: meta}) {
		_ = msg.Nak()
		c.metrics.naked(ev.Type())
	}
}

// work runs queued messages until the queue closes.
func (c *consumer) work(ctx context.Context) {
	for {
		key, d, ok := c.queue.next()
		if !ok {
			return
		}
		c.handle(ctx, d)
		c.queue.done(key)
	}
}

// handle runs the handler in its span and settles the message.
func (c *consumer) handle(ctx context.Context, d *delivery) {
	m := d.m
	ev := &m.Event
	parent := propagator().Extract(ctx, headerCarrier(m.msg.Headers()))
	flow := flowContext(ev)
	hop := trace.SpanContextFromContext(parent)
	opts := []trace.SpanStartOption{
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(eventAttributes(ev)...),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", m.Subject),
			attribute.String("messaging.consumer.group.name", c.durable),
			attribute.String("messaging.message.id", ev.ID()),
			attribute.Int64("messaging.nats.stream.sequence", int64(m.StreamSeq)),
			attribute.Int64("messaging.nats.delivery_count", int64(m.Delivery)),
			attribute.String("pv.key", m.Key),
		),
	}
	switch {
	case !hop.IsValid() && flow.IsValid():
		// Published by a tool that set only the CloudEvents extension: the
		// flow's start is the best parent there is.
		parent = trace.ContextWithRemoteSpanContext(ctx, flow)
	case hop.IsValid() && flow.IsValid() && !flow.Equal(hop):
		opts = append(opts, trace.WithLinks(trace.Link{
			SpanContext: flow,
			Attributes:  []attribute.KeyValue{attribute.String("pv.link", "flow-start")},
		}))
	}
	hctx, span := tracer().Start(parent, c.cfg.Service+" "+ev.Type(), opts...)
	defer span.End()

	started := time.Now()
	err := c.call(hctx, m)
	took := time.Since(started)
	// settle logs under the handler's span, so its lines carry trace ids.
	outcome := c.settle(trace.ContextWithSpan(ctx, span), d, err)
	c.metrics.handled(ev.Type(), outcome, took)
	span.SetAttributes(attribute.String("pv.outcome", outcome))
	if c.cfg.OnSettled != nil {
		c.cfg.OnSettled(Settled{Durable: c.durable, Type: ev.Type(), Outcome: outcome, Delivery: m.Delivery, Took: took})
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

// call runs the handler; a panic is a retryable failure, not a dead process.
func (c *consumer) call(ctx context.Context, m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("handler panicked", "ce_type", m.Event.Type(), "key", m.Key, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return c.handler(ctx, m)
}

// Outcomes recorded on the handler span.
const (
	outcomeAck        = "ack"
	outcomeRetry      = "retry"
	outcomeInProgress = "in-progress"
	outcomeDeadLetter = "dead-letter"
)

// settle acks, naks or dead-letters a message by the handler's outcome.
func (c *consumer) settle(ctx context.Context, d *delivery, err error) string {
	m := d.m
	log := c.log.With("ce_type", m.Event.Type(), "ce_id", m.Event.ID(), "key", m.Key, "delivery", m.Delivery)
	if err == nil {
		// A plain ack, not a confirmed one: the handlers are idempotent,
		// so an ack lost in flight only brings the event back to a
		// handler that finds its work done, whereas waiting for the
		// server's confirmation of every ack cost a round trip per event
		// (a fifth of a burst's throughput in `podvisor bench`).
		if aerr := m.msg.Ack(); aerr != nil && !errors.Is(aerr, jetstream.ErrMsgAlreadyAckd) {
			log.WarnContext(ctx, "ack failed; the message will be redelivered", "err", aerr)
		}
		c.metrics.acked(m.Event.Type())
		return outcomeAck
	}
	if IsPermanent(err) {
		log.WarnContext(ctx, "permanent failure", "err", err)
		c.deadLetter(ctx, d, err.Error())
		return outcomeDeadLetter
	}
	if m.LastDelivery() {
		log.WarnContext(ctx, "last delivery failed", "err", err)
		c.deadLetter(ctx, d, ReasonMaxDeliveries+": "+err.Error())
		return outcomeDeadLetter
	}
	delay, ok := RetryDelay(err)
	if !ok {
		delay = c.cfg.Backoff(m.Delivery)
	}
	if ctx.Err() != nil {
		// Cut off by the drain timeout: the failure says nothing about the
		// event, so let another process take it now.
		delay = 0
	}
	outcome := outcomeRetry
	if CodeOf(err) == CodeInProgress {
		outcome = outcomeInProgress
		log.DebugContext(ctx, "work in progress; will look again", "err", err, "delay", delay)
	} else {
		log.InfoContext(ctx, "handler failed; will retry", "err", err, "delay", delay)
	}
	if nerr := m.msg.NakWithDelay(delay); nerr != nil {
		log.WarnContext(ctx, "nak", "err", nerr)
	}
	c.metrics.naked(m.Event.Type())
	return outcome
}

// deadLetter copies the message to pv.dlq.<service> and only then
// terminates it. If the copy cannot be stored the message is retried later
// rather than dropped.
func (c *consumer) deadLetter(ctx context.Context, d *delivery, reason string) {
	m := d.m
	dl := DeadLetter{
		Reason:     reason,
		Service:    c.cfg.Service,
		Consumer:   c.durable,
		Stream:     m.Stream,
		Subject:    m.Subject,
		StreamSeq:  m.StreamSeq,
		Deliveries: m.Delivery,
		Time:       time.Now(),
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := c.bus.publishDeadLetter(pctx, dl, m.msg.Headers(), m.msg.Data()); err != nil {
		c.log.ErrorContext(ctx, "dead letter not stored; message will be redelivered", "seq", m.StreamSeq, "err", err)
		_ = m.msg.NakWithDelay(c.cfg.Backoff(m.Delivery))
		c.metrics.naked(m.Event.Type())
		return
	}
	c.metrics.deadLettered(m.Event.Type())
	c.log.WarnContext(ctx, "message dead-lettered", "seq", m.StreamSeq, "subject", m.Subject, "reason", cleanReason(reason))
	if err := m.msg.TermWithReason(shortReason(reason)); err != nil {
		c.log.Warn("term", "seq", m.StreamSeq, "err", err)
	} else {
		c.metrics.termed(m.Event.Type())
	}
}

func shortReason(s string) string {
	s = cleanReason(s)
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// keepAlive sends InProgress for every held message, queued or running;
// the consumer calls it every AckWait/3. Queued messages need it too: one
// waiting behind a slow handler of the same key would otherwise be
// redelivered and handled twice.
func (c *consumer) keepAlive(context.Context) error {
	for _, d := range c.queue.snapshot() {
		_ = d.m.msg.InProgress()
	}
	return nil
}

// retryPause is a growing pause between attempts after transport errors.
type retryPause struct{ d time.Duration }

func newRetryPause() *retryPause { return &retryPause{d: 100 * time.Millisecond} }

func (r *retryPause) reset() { r.d = 100 * time.Millisecond }

func (r *retryPause) wait(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(r.d):
	}
	r.d = min(2*r.d, 5*time.Second)
}
