package cli

import (
	"strconv"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:  []string{"drains", "drain"},
		kind:   "Drain",
		bucket: events.BucketDrains,
		header: []string{"HOST", "PHASE", "MIGRATED", "VMS", "UNMOVABLE", "AGE", "MESSAGE"},
		decode: decodeRow[drainRow],
	})
}

// drainRow is the latest drain of one host (`podvisor get drains`).
type drainRow struct{ events.DrainRecord }

func (d *drainRow) Namespace() string { return "" }
func (d *drainRow) Name() string      { return d.Host }
func (d *drainRow) Object() any       { return d.DrainRecord }

func (d *drainRow) Row(now time.Time) []string {
	r := &d.DrainRecord
	return []string{r.Host, dash(r.Phase), strconv.Itoa(r.Migrated), strconv.Itoa(r.MigratedVMs), strconv.Itoa(len(r.Unmovable)), age(r.StartedAt, now), dash(r.Message)}
}
