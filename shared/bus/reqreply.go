package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
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

func (b *Bus) reply(ctx context.Context, subject string, timeout time.Duration, req *nats.Msg, h func(context.Context, []byte) ([]byte, error)) {
	parent := propagator().Extract(ctx, headerCarrier(req.Header))
	ctx, span := tracer().Start(parent, "serve "+subject, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))
	defer span.End()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := safeServe(ctx, h, req.Data)
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
	_ = b.nc.PublishMsg(resp)
}

// safeServe turns a panicking query handler into an error reply rather than
// a dead process.
func safeServe(ctx context.Context, h func(context.Context, []byte) ([]byte, error), data []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	return h(ctx, data)
}

// Request sends data to subject and waits for one reply until ctx ends. An
// error returned by the serving handler comes back wrapped in ErrRemote.
func (b *Bus) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	if subject == "" {
		return nil, errors.New("bus: request: subject is empty")
	}
	ctx, span := tracer().Start(ctx, "request "+subject, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))
	defer span.End()
	msg := nats.NewMsg(subject)
	msg.Data = data
	propagator().Inject(ctx, headerCarrier(msg.Header))
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
