package nativevm

import (
	"context"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// ImageDisk exposes imageDisk to the tests of concurrent builds.
func (c *Controller) ImageDisk(ctx context.Context, ref, ds string) (string, int64, error) {
	b, _, err := c.imageDisk(ctx, ref, "", ds)
	return b.disk, b.size, err
}

// Deliver runs the handler of p on a delivery of ev, the message the VMS
// stream stored at seq: a redelivery when it was handled before (its
// handler died before the ack, or it waited for a retry).
func (c *Controller) Deliver(ctx context.Context, ev event.Event, seq uint64, p events.Payload) error {
	m := &bus.Message{Event: ev, Key: p.ObjectKey(), Delivery: 2, Stream: events.StreamVMs, StreamSeq: seq, Log: c.log}
	switch p := p.(type) {
	case *events.VMDeclared:
		return c.onDeclared(ctx, m, p)
	case *events.VMDeleteRequested:
		return c.onDeleteRequested(ctx, m, p)
	}
	panic("Deliver: no handler for the test's payload")
}
