package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"hosts", "host", "hs"},
		kind:       "Host",
		bucket:     events.BucketHosts,
		header:     []string{"NAME", "CLUSTER", "STATE", "CPU(alloc/cap)", "MEMORY(alloc/cap)", "PODS", "VMS", "NETWORKS"},
		wideHeader: []string{"CORES", "MAX PODS", "DATASTORES", "PORT GROUPS"},
		wide: func(r record) []string {
			h := &r.(*hostRow).HostRecord
			return []string{strconv.Itoa(int(h.CPUCores)), strconv.Itoa(h.MaxPods), dash(strings.Join(h.Datastores, ",")), dash(strings.Join(h.Networks, ","))}
		},
		decode: decodeRow[hostRow],
	})
}

type hostRow struct{ events.HostRecord }

func (h *hostRow) Namespace() string         { return "" }
func (h *hostRow) Name() string              { return h.HostRecord.Name }
func (h *hostRow) Labels() map[string]string { return h.HostRecord.Labels }
func (h *hostRow) Object() any               { return h.HostRecord }
func (h *hostRow) Row(time.Time) []string {
	r := &h.HostRecord
	return []string{
		r.Name, dash(r.Cluster), r.State(),
		fmt.Sprintf("%.1f/%.0f", float64(r.AllocatedCPUMilli)/1000, float64(r.CPUCapacityMilli)/1000),
		bytesGiB(r.AllocatedMemoryBytes) + "/" + bytesGiB(r.MemoryCapacityBytes),
		strconv.Itoa(r.Pods), strconv.Itoa(r.VMs),
		dash(strings.Join(r.PodNetworks, ",")),
	}
}
