package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// HeaderError carries a Serve handler's error back to the requester.
const HeaderError = "Pv-Error"

// ErrRemote wraps the error a Serve handler returned, as Request reports it.
var ErrRemote = errors.New("remote error")

// HeaderReplyBy carries the time until which the requester waits for its
// answer (RFC 3339, UTC): Serve does not answer a request whose requester
// has given up. A late answer is not only wasted work: a service identity
// may answer a request only within AnswerWindow of receiving it (the
// server's response permission), so answers that queued behind slow ones
// were refused as permission violations.
const HeaderReplyBy = "Pv-Reply-By"

// AnswerWindow is how long a service identity may answer a request it
// received (the response permission of its JWT, Authority.mint), and so the
// longest a Request waits: a request without a deadline, or with a later
// one, waits this long.
const AnswerWindow = time.Minute

// maxConcurrentRequests bounds the replies one Serve computes at once; reads
// are cheap, but a burst should queue in NATS, not pile up goroutines.
const maxConcurrentRequests = 64

// Serve answers requests on subject until ctx ends, then drains: requests
// already received are answered before it returns. Every process serving the
// same subject joins one queue group named after it, so each request is
// answered once whatever the number of replicas. Use it for read-only
// queries a caller needs answered now; anything that changes state is an
// event.
func (b *Bus) Serve(ctx context.Context, subject string, h func(ctx context.Context, data []byte) ([]byte, error)) error {
	return b.ServeWithin(ctx, subject, DefaultServeTimeout, h)
}

// DefaultServeTimeout bounds each Serve handler: a requester has given up
// long before, and a handler stuck on a hung call must not hold its slot
// (and the shutdown) forever.
const DefaultServeTimeout = 30 * time.Second

// ServeWithin is Serve with each handler's context bounded by timeout; a
// handler that overruns it answers with its error (the context's).
func (b *Bus) ServeWithin(ctx context.Context, subject string, timeout time.Duration, h func(ctx context.Context, data []byte) ([]byte, error)) error {
	if h == nil {
		return errors.New("bus: serve: handler is nil")
	}
	return b.ServeMsgWithin(ctx, subject, timeout, func(ctx context.Context, req *nats.Msg) ([]byte, error) { return h(ctx, req.Data) })
}

// ErrReplyHandedOn is what a ServeMsgWithin handler returns when it handed
// the request's reply subject on (to a service that streams the answer
// itself): nothing is sent in reply then.
var ErrReplyHandedOn = errors.New("bus: reply handed on")

// ServeMsgWithin is ServeWithin for a handler that needs the request
// itself: the subject it came on (subject may be a wildcard serving many)
// or its reply subject, to hand on (ErrReplyHandedOn). A request whose
// requester has stopped waiting (HeaderReplyBy) reaches no handler, and no
// answer goes out after that time.
func (b *Bus) ServeMsgWithin(ctx context.Context, subject string, timeout time.Duration, h func(ctx context.Context, req *nats.Msg) ([]byte, error)) error {
	if timeout <= 0 {
		return fmt.Errorf("bus: serve %s: timeout %s must be positive", subject, timeout)
	}
	if subject == "" {
		return errors.New("bus: serve: subject is empty")
	}
	if h == nil {
		return errors.New("bus: serve: handler is nil")
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConcurrentRequests)
	// Replies run outside ctx's cancellation so that a request received just
	// before shutdown is still answered.
	rctx := context.WithoutCancel(ctx)
	sub, err := b.nc.QueueSubscribe(subject, subject, func(req *nats.Msg) {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			b.reply(rctx, subject, timeout, req, h)
		})
	})
	if err != nil {
		return fmt.Errorf("bus: serve %s: %w", subject, err)
	}
	if err := b.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("bus: serve %s: %w", subject, err)
	}
	<-ctx.Done()
	// Drain stops new deliveries and invalidates the subscription once the
	// messages it already holds have been passed to the callback.
	_ = sub.Drain()
	deadline := time.Now().Add(DefaultDrainTimeout)
	for sub.IsValid() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	return nil
}

func (b *Bus) reply(ctx context.Context, subject string, timeout time.Duration, req *nats.Msg, h func(context.Context, *nats.Msg) ([]byte, error)) {
	by, hasBy := replyBy(req)
	if hasBy && !time.Now().Before(by) {
		serveExpired.Add(1)
		return // the requester stopped waiting: nobody reads an answer now
	}
	parent := propagator().Extract(ctx, headerCarrier(req.Header))
	ctx, span := tracer().Start(parent, "serve "+subject, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if hasBy {
		var cancelBy context.CancelFunc
		ctx, cancelBy = context.WithDeadline(ctx, by)
		defer cancelBy()
	}
	out, err := safeServe(ctx, h, req)
	if errors.Is(err, ErrReplyHandedOn) {
		return
	}
	resp := nats.NewMsg(req.Reply)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		resp.Header.Set(HeaderError, cleanReason(err.Error()))
	} else {
		resp.Data = out
	}
	if req.Reply == "" {
		return
	}
	if hasBy && !time.Now().Before(by) {
		serveExpired.Add(1)
		return
	}
	_ = b.nc.PublishMsg(resp)
}

// serveExpired counts the requests Serve dropped because their requester
// had stopped waiting (ServeExpired).
var serveExpired atomic.Int64

// ServeExpired is how many requests this process's Serve handlers left
// unanswered because the requester's HeaderReplyBy had passed.
func ServeExpired() int64 { return serveExpired.Load() }

// replyBy returns the time until which req's requester waits
// (HeaderReplyBy); ok is false when the request does not say.
func replyBy(req *nats.Msg) (time.Time, bool) {
	if req == nil || req.Header == nil {
		return time.Time{}, false
	}
	v := req.Header.Get(HeaderReplyBy)
	if v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	return t, err == nil
}

// newRequest is a request message to subject carrying ctx's trace and the
// time its requester stops waiting (HeaderReplyBy): ctx's deadline, at most
// AnswerWindow from now. It returns the context to wait with, bounded the
// same way.
func newRequest(ctx context.Context, subject string, data []byte) (*nats.Msg, context.Context, context.CancelFunc) {
	by := time.Now().Add(AnswerWindow)
	if dl, ok := ctx.Deadline(); ok && dl.Before(by) {
		by = dl
	}
	ctx, cancel := context.WithDeadline(ctx, by)
	msg := nats.NewMsg(subject)
	msg.Data = data
	propagator().Inject(ctx, headerCarrier(msg.Header))
	msg.Header.Set(HeaderReplyBy, by.UTC().Format(time.RFC3339Nano))
	return msg, ctx, cancel
}

// safeServe turns a panicking query handler into an error reply rather than
// a dead process.
func safeServe(ctx context.Context, h func(context.Context, *nats.Msg) ([]byte, error), req *nats.Msg) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return h(ctx, req)
}

// Request sends data to subject and waits for one reply until ctx ends (at
// most AnswerWindow), telling the server when it stops waiting
// (HeaderReplyBy). An error returned by the serving handler comes back
// wrapped in ErrRemote.
func (b *Bus) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	if subject == "" {
		return nil, errors.New("bus: request: subject is empty")
	}
	ctx, span := tracer().Start(ctx, "request "+subject, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))
	defer span.End()
	msg, ctx, cancel := newRequest(ctx, subject, data)
	defer cancel()
	resp, err := b.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			err = fmt.Errorf("bus: request %s: nobody serves this subject: %w", subject, err)
		} else {
			err = fmt.Errorf("bus: request %s: %w", subject, err)
		}
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	if e := resp.Header.Get(HeaderError); e != "" {
		err := fmt.Errorf("bus: request %s: %w: %s", subject, ErrRemote, e)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	return resp.Data, nil
}
