package bus

import (
	"errors"
	"fmt"
	"time"
)

// permanentError marks a handler failure that no retry can fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the consumer copies the message
// to the service's dead-letter subject with err as the reason, then
// terminates it so it is never redelivered. Use it for input that is wrong
// (a payload that fails validation, a reference to something that will never
// exist), not for a dependency that is down. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or an error it wraps) was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// retryAfterError asks for a redelivery after a specific delay.
type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter asks for the message to be redelivered after d instead of the
// consumer's backoff, for a handler that knows when trying again makes sense
// (a lease that expires, a host in maintenance for a known time). It still
// counts as a delivery: after MaxDeliver the message is dead-lettered.
// RetryAfter(nil, d) is nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	if d < 0 {
		d = 0
	}
	return &retryAfterError{err: err, delay: d}
}

// RetryDelay returns the delay asked for with RetryAfter, if any.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}
