package bus

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Code is what a handler's error asks the consumer to do with the message.
// Every service classifies its failures with these four codes and nothing
// else, so that "retry or give up" is decided in one place.
type Code uint8

const (
	// CodeRetry: a failure a later delivery may outlive (a dependency that
	// is down, a conflict). Redelivered after the consumer's backoff. Any
	// error not marked otherwise has this code.
	CodeRetry Code = iota
	// CodeRetryAfter: as CodeRetry, after a delay the handler chose.
	CodeRetryAfter
	// CodePermanent: no retry can fix it (bad input, a reference to what
	// will never exist). Dead-lettered at once.
	CodePermanent
	// CodeInProgress: not a failure; the work goes on elsewhere (a vSphere
	// task, another replica's pull) and the event should come back after a
	// delay to look at it again.
	CodeInProgress
)

func (c Code) String() string {
	switch c {
	case CodeRetry:
		return "retry"
	case CodeRetryAfter:
		return "retry-after"
	case CodePermanent:
		return "permanent"
	case CodeInProgress:
		return "in-progress"
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// codedError carries a Code and, optionally, a delay.
type codedError struct {
	code  Code
	delay time.Duration
	err   error
}

// Error is the wrapped error's text: the code is how the message is
// settled, which the consumer logs and records on the span, not part of
// what went wrong (failure events quote this text to a person).
func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the consumer runs the handler's
// failure hook (which publishes the domain's failure event), copies the
// message to the service's dead-letter subject with err as the reason and
// terminates it. Use it for input that is wrong, not for a dependency that is
// down. Permanent(nil) is nil. It is the only such constructor in podvisor:
// services classify their failures with it, RetryAfter and InProgress.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: CodePermanent, err: err}
}

// RetryAfter asks for the message to be redelivered after d instead of the
// consumer's backoff, for a handler that knows when trying again makes sense
// (a lease that expires, a host in maintenance for a known time). It still
// counts as a delivery: after MaxDeliver the message is given up.
// RetryAfter(nil, d) is nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &codedError{code: CodeRetryAfter, delay: max(d, 0), err: err}
}

// InProgress says the work the event asks for is under way and the event
// should be looked at again after d (a vSphere task still running, a pull
// held by another replica). It is not logged as a failure, but it counts as
// a delivery as any redelivery does. InProgress(nil, d) is nil.
func InProgress(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &codedError{code: CodeInProgress, delay: max(d, 0), err: err}
}

// CodeOf returns the code err carries: the outermost one set with Permanent,
// RetryAfter or InProgress, CodeRetry for any other error.
func CodeOf(err error) Code {
	var c *codedError
	if errors.As(err, &c) {
		return c.code
	}
	return CodeRetry
}

// IsPermanent reports whether err (or an error it wraps) was marked Permanent.
func IsPermanent(err error) bool { return CodeOf(err) == CodePermanent }

// RetryDelay returns the delay asked for with RetryAfter or InProgress.
func RetryDelay(err error) (time.Duration, bool) {
	var c *codedError
	if errors.As(err, &c) && (c.code == CodeRetryAfter || c.code == CodeInProgress) {
		return c.delay, true
	}
	return 0, false
}

// reasonError attaches a reason to an error.
type reasonError struct {
	reason string
	err    error
}

func (e *reasonError) Error() string { return e.err.Error() }
func (e *reasonError) Unwrap() error { return e.err }

// WithReason attaches reason, a CamelCase word a person can search for and
// act on (NetworkNotAvailable, ImageNotFound, CreateVMFailed), to err
// without changing its code. Failure events carry it (ReasonOf) beside the
// error text, which says what exactly went wrong. WithReason(r, nil) is nil.
func WithReason(reason string, err error) error {
	if err == nil {
		return nil
	}
	return &reasonError{reason: reason, err: err}
}

// ReasonOf returns the reason attached to err with WithReason (the
// outermost one), or def when there is none.
func ReasonOf(err error, def string) string {
	var r *reasonError
	if errors.As(err, &r) && r.reason != "" {
		return r.reason
	}
	return def
}

// FailureMessage is the message of the failure event for err, which ended
// the handling of m: the error itself for a refusal, and for an error a
// retry could have outlived, how many deliveries it was given.
func (m *Message) FailureMessage(err error) string {
	if IsPermanent(err) {
		return err.Error()
	}
	return fmt.Sprintf("gave up after %d attempts: %s", m.Delivery, err)
}

// Retry runs fn until it succeeds, fails with a Permanent error, ctx ends
// or attempts have run out: for work that runs outside a delivery (a
// migration's runner, a drain) and so has no redelivery behind it. Between
// attempts it waits as the error asks (RetryAfter, InProgress) or by
// backoff, as a consumer would (the last entry repeats). The error after
// the last attempt keeps its code and reason and says how many attempts
// were made, as FailureMessage does for a delivery.
func Retry(ctx context.Context, attempts int, backoff []time.Duration, fn func(context.Context) error) error {
	cc := ConsumerConfig{BackOff: backoff}
	for n := 1; ; n++ {
		err := fn(ctx)
		if err == nil || IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		if n >= attempts {
			return fmt.Errorf("gave up after %d attempts: %w", n, err)
		}
		delay, ok := RetryDelay(err)
		if !ok {
			delay = cc.Backoff(uint64(n))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}
