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
		layersPulled:  newCounter(m, "podvisor_imagecache_layers_pulled_total", "{layer}", "Layer blobs fetched from registries"),
		bytesPulled:   newCounter(m, "podvisor_imagecache_pulled_bytes_total", "By", "Compressed layer bytes fetched from registries"),
		chainsCopied:  newCounter(m, "podvisor_imagecache_chains_copied_total", "{chain}", "Image chains copied between datastores"),
		bytesCopied:   newCounter(m, "podvisor_imagecache_copied_bytes_total", "By", "Layer bytes copied between datastores"),
		chainsEvicted: newCounter(m, "podvisor_imagecache_chains_evicted_total", "{chain}", "Image chains removed by the garbage collector"),
		bytesEvicted:  newCounter(m, "podvisor_imagecache_evicted_bytes_total", "By", "Layer bytes removed by the garbage collector"),
		rebuilds:      newCounter(m, "podvisor_imagecache_rebuilds_total", "{rebuild}", "Metadata rebuilds after Redis lost its data"),
		diskBytes:     newCounter(m, "podvisor_imagecache_disk_written_bytes_total", "By", "Image disk bytes (filesystem images) written to datastores"),
	}
}
