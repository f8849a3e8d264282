package node

import (
	"context"
	"testing"
	"time"
)

// TestRequestsSayUntilWhenTheyWait: a query to the supervisor carries the
// time its requester stops waiting (Pv-Reply-By, which the supervisor's
// bus.Serve reads to drop a request no one waits for): the context's
// deadline, or a minute from now when it has none or a later one; the
// wait ends then too.
func TestRequestsSayUntilWhenTheyWait(t *testing.T) {
	soon := time.Now().Add(5 * time.Second).Truncate(time.Millisecond)
	for _, tc := range []struct {
		name     string
		deadline time.Time // zero: none
		want     func(time.Time) bool
	}{
		{"deadline", soon, func(by time.Time) bool { return by.Equal(soon) }},
		{"no deadline", time.Time{}, func(by time.Time) bool {
			return by.After(time.Now().Add(replyWithin-5*time.Second)) && !by.After(time.Now().Add(replyWithin))
		}},
		{"a later deadline", time.Now().Add(time.Hour), func(by time.Time) bool { return !by.After(time.Now().Add(replyWithin)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if !tc.deadline.IsZero() {
				var cancel context.CancelFunc
				ctx, cancel = context.WithDeadline(ctx, tc.deadline)
				defer cancel()
			}
			msg, wctx, cancel := request(ctx, "pv.query.guestcluster.team-a.gc1.pod.list", []byte("{}"))
			defer cancel()
			by, err := time.Parse(time.RFC3339Nano, msg.Header.Get(headerReplyBy))
			if err != nil || !tc.want(by) {
				t.Fatalf("%s: %q (%v)", headerReplyBy, msg.Header.Get(headerReplyBy), err)
			}
			if dl, ok := wctx.Deadline(); !ok || !dl.Equal(by) {
				t.Errorf("the wait ends at %v (%v), want %v", dl, ok, by)
			}
			if msg.Subject != "pv.query.guestcluster.team-a.gc1.pod.list" || string(msg.Data) != "{}" {
				t.Errorf("request %q %q", msg.Subject, msg.Data)
			}
		})
	}
}
