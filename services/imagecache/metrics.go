package imagecache

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// counter is one of the service's counts: kept in process for Stats and
// exported as an OpenTelemetry counter (served on /metrics by the process's
// health endpoint).
type counter struct {
	n    atomic.Int64
	otel metric.Int64Counter
}

func newCounter(m metric.Meter, name, unit, desc string) *counter {
	c := &counter{}
	// A meter that cannot build the instrument leaves a no-op; Stats still counts.
	c.otel, _ = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	return c
}

func (c *counter) add(n int64) {
	c.n.Add(n)
	if c.otel != nil {
		c.otel.Add(context.Background(), n)
	}
}

func (c *counter) load() int64 { return c.n.Load() }

type counters struct {
	layersPulled, bytesPulled, chainsCopied, bytesCopied, chainsEvicted, bytesEvicted, rebuilds, diskBytes *counter
}

func newCounters() counters {
	m := otel.Meter("github.com/podvisor/podvisor/services/imagecache")
	return counters{
		layersPulled:  newCounter(m, "podvisor.imagecache.layers.pulled", "{layer}", "Layer blobs fetched from registries"),
		bytesPulled:   newCounter(m, "podvisor.imagecache.pulled", "By", "Compressed layer bytes fetched from registries"),
		chainsCopied:  newCounter(m, "podvisor.imagecache.chains.copied", "{chain}", "Image chains copied between datastores"),
		bytesCopied:   newCounter(m, "podvisor.imagecache.copied", "By", "Layer bytes copied between datastores"),
		chainsEvicted: newCounter(m, "podvisor.imagecache.chains.evicted", "{chain}", "Image chains removed by the garbage collector"),
		bytesEvicted:  newCounter(m, "podvisor.imagecache.evicted", "By", "Layer bytes removed by the garbage collector"),
		rebuilds:      newCounter(m, "podvisor.imagecache.rebuilds", "{rebuild}", "Metadata rebuilds after Redis lost its data"),
		diskBytes:     newCounter(m, "podvisor.imagecache.disk.written", "By", "Image disk bytes (filesystem images) written to datastores"),
	}
}
