package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func init() {
	registerResource(&resource{
		names:      []string{"networkservices", "networkservice", "netsvc"},
		kind:       events.KindNetworkService,
		bucket:     events.BucketNetServices,
		header:     []string{"NAME", "TYPE", "NETWORKS", "ADDRESSES", "STATUS"},
		wideHeader: []string{"DOMAIN", "UPDATED"},
		wide: func(r record) []string {
			s := &r.(*networkServiceRow).NetworkServiceRecord
			domain := ""
			if len(s.Profiles) > 0 {
				domain = s.Profiles[0].Domain
			}
			return []string{dash(domain), age(s.UpdatedAt, time.Now())}
		},
		decode: decodeRow[networkServiceRow],
	})
}

type networkServiceRow struct{ events.NetworkServiceRecord }

func (n *networkServiceRow) Namespace() string { return "" }
func (n *networkServiceRow) Name() string      { return n.NetworkServiceRecord.Name }
func (n *networkServiceRow) Object() any       { return n.NetworkServiceRecord }

func (n *networkServiceRow) Row(time.Time) []string {
	r := &n.NetworkServiceRecord
	addrs := make([]string, 0, len(r.Profiles))
	for _, p := range r.Profiles {
		addrs = append(addrs, fmt.Sprintf("%s=%s:%d", p.Network, p.Address, p.Port))
	}
	status := statusCell(r.Status, r.Reason, r.Message)
	return []string{
		r.Name, r.Spec.Type, fmt.Sprintf("%d/%d", len(r.Profiles), len(r.Spec.Networks)),
		dash(strings.Join(addrs, ",")), dash(status),
	}
}

// describeNetworkService prints a network service's record, a row per
// network it serves, and the events about it.
func describeNetworkService(ctx context.Context, b *bus.Bus, out io.Writer, name string) error {
	var r events.NetworkServiceRecord
	if err := getRecord(ctx, b, events.BucketNetServices, name, "networkservice "+name, &r); err != nil {
		return err
	}
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("Type", r.Spec.Type)
	f.add("Networks", strings.Join(r.Spec.Networks, ", "))
	f.status("Status", r.Status, r.Reason, r.Message)
	f.add("Updated", r.UpdatedAt.Format(time.RFC3339))
	f.section("Profiles")
	for _, p := range r.Profiles {
		f.row(p.Network, fmt.Sprintf("%s/%d", p.Address, p.PrefixLength), fmt.Sprintf("port %d", p.Port), p.PortGroup, dash(p.Domain))
	}
	f.flush()
	return describeEvents(ctx, b, out, name, time.Time{}, events.StreamNetworks)
}
