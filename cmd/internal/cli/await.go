package cli

import (
	"context"
	"errors"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// awaitAnswers is the wait of the commands that publish a request and then
// print the services' answers (apply, check, delete, drain, migrate,
// rebalance). It hands each event from answers to handle until handle says
// the wait is over (done, or an error), wait passes (the result is
// timedOut's), or ctx ends. A second channel, when given, is read alongside
// the first (a command that follows two streams); nil channels are never
// ready.
func awaitAnswers(ctx context.Context, wait time.Duration, timedOut func() error,
	handle func(ev event.Event) (done bool, err error), answers ...<-chan event.Event) error {
	var first, second <-chan event.Event
	switch len(answers) {
	case 2:
		second = answers[1]
		fallthrough
	case 1:
		first = answers[0]
	case 0:
	default:
		panic("awaitAnswers reads two answer channels at most")
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		var ev event.Event
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return timedOut()
		case ev, ok = <-first:
		case ev, ok = <-second:
		}
		if !ok {
			return errors.New("event stream closed while waiting for an answer")
		}
		if done, err := handle(ev); done || err != nil {
			return err
		}
	}
}
