package deps

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// Deps are the connections a service runs on.
type Deps struct {
	// Bus is the JetStream connection, its topology declared.
	Bus *bus.Bus
	// VSphere is the vCenter session as vsphere.Connect makes it: a
	// client, and a finder scoped to the datacenter the service works in.
	VSphere *vsphere.Session
	// Redis is the image cache's metadata store.
	Redis redis.UniversalClient
	// Logger receives the service's logs; nil discards them (Log).
	Logger *slog.Logger
}

// ErrMissing is what Require's errors wrap.
var ErrMissing = errors.New("required")

// Need is one connection a service requires and why it does; only the
// Need* functions make one (Require skips a zero Need).
type Need struct {
	field string
	have  func(Deps) bool
	why   string
}

// NeedBus requires Deps.Bus.
func NeedBus(why string) Need {
	return Need{"Bus", func(d Deps) bool { return d.Bus != nil }, why}
}

// NeedVSphere requires Deps.VSphere: a session with a client, a finder and
// a datacenter, as vsphere.Connect makes one.
func NeedVSphere(why string) Need {
	return Need{"VSphere", func(d Deps) bool {
		s := d.VSphere
		return s != nil && s.Client != nil && s.Finder != nil && s.Datacenter != nil
	}, why}
}

// NeedRedis requires Deps.Redis.
func NeedRedis(why string) Need {
	return Need{"Redis", func(d Deps) bool { return d.Redis != nil }, why}
}

// Require reports every needed connection d lacks, all at once, each as
// "Deps.<Field>: required (<why>)" wrapping ErrMissing; nil when d has them
// all.
func (d Deps) Require(needs ...Need) error {
	var errs []error
	for _, n := range needs {
		if n.have != nil && !n.have(d) {
			errs = append(errs, fmt.Errorf("Deps.%s: %w (%s)", n.field, ErrMissing, n.why))
		}
	}
	return errors.Join(errs...)
}

// Log is the service's logger: Logger, or one that discards when it is nil.
func (d Deps) Log() *slog.Logger { return OrDiscard(d.Logger) }

// OrDiscard is log, or a logger that discards when log is nil.
func OrDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
