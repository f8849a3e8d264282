// Package imagelocality prefers hosts that see a datastore already holding
// the pod's images, so that the pod VM's root disks are children of image
// disks on the same datastore and nothing is pulled or copied.
//
// The image cache keeps, in Redis, which datastores hold a ready or pulling
// disk chain for an image; a chain being pulled counts too (a second pod of
// the same image should follow the first rather than start another pull).
// The plugin reads that model once per pod (PreScore) through a Reader: the
// fraction of the pod's image bytes present per datastore. A host scores the
// best fraction among its datastores. Redis is a cache: when the read fails
// every host scores zero and scheduling carries on.
package imagelocality

import (
	"context"
	"sort"

	"github.com/podvisor/podvisor/services/scheduler/framework"
)

// Name of the plugin in profiles.
const Name = "ImageLocality"

// ServiceName is the name under which the scheduler registers the Reader
// for the plugin's Handle.
const ServiceName = "imagelocality.Reader"

// Reader is the image cache's locality read model.
type Reader interface {
	// Locality returns, per datastore, the fraction (0..1) of the images'
	// bytes present there, ready or being pulled.
	Locality(ctx context.Context, images []string) (map[string]float64, error)
}

// Plugin is the ImageLocality score.
type Plugin struct {
	reader Reader
}

var (
	_ framework.PreScorePlugin = (*Plugin)(nil)
	_ framework.ScorePlugin    = (*Plugin)(nil)
)

// New is the plugin's factory; without a Reader every host scores zero.
func New(h framework.Handle) (framework.Plugin, error) {
	r, _ := h.Service(ServiceName).(Reader)
	return &Plugin{reader: r}, nil
}

// Name implements framework.Plugin.
func (*Plugin) Name() string { return Name }

// Locality is what PreScore leaves in the cycle state: fraction per
// datastore.
type Locality map[string]float64

// PreScore implements framework.PreScorePlugin.
func (pl *Plugin) PreScore(ctx context.Context, cs *framework.CycleState, p *framework.PodInfo, _ []*framework.Host) *framework.Status {
	if pl.reader == nil || len(p.Images) == 0 {
		return nil
	}
	loc, err := pl.reader.Locality(ctx, p.Images)
	if err != nil || len(loc) == 0 {
		return nil // a cache miss is not a scheduling failure
	}
	cs.Write(Name, Locality(loc))
	return nil
}

// Score implements framework.ScorePlugin.
func (pl *Plugin) Score(_ context.Context, cs *framework.CycleState, _ *framework.PodInfo, h *framework.Host) (int64, *framework.Status) {
	loc := localityOf(cs)
	if loc == nil {
		return 0, nil
	}
	best := 0.0
	for _, ds := range h.Datastores {
		if f := loc[ds]; f > best {
			best = f
		}
	}
	if best > 1 {
		best = 1
	}
	return int64(best * float64(framework.MaxHostScore)), nil
}

func localityOf(cs *framework.CycleState) Locality {
	if cs == nil {
		return nil
	}
	v, _ := cs.Read(Name)
	loc, _ := v.(Locality)
	return loc
}

// OrderDatastores returns the host's datastores best first for the pod
// (most of its image bytes first, then by name), which is the order
// pod.scheduled lists them in.
func OrderDatastores(cs *framework.CycleState, h *framework.Host) []string {
	out := append([]string(nil), h.Datastores...)
	loc := localityOf(cs)
	sort.SliceStable(out, func(i, j int) bool {
		if loc[out[i]] != loc[out[j]] {
			return loc[out[i]] > loc[out[j]]
		}
		return out[i] < out[j]
	})
	return out
}
