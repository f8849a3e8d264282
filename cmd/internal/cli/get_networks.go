package cli

import (
	"fmt"
	"strconv"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:  []string{"networks", "network", "net"},
		kind:   "Network",
		bucket: events.BucketNetworks,
		header: []string{"NAME", "VLAN", "CIDR", "VERSION", "HOSTS", "IPS USED", "STATUS"},
		// Which hosts carry a network: `describe network` (one key per
		// host in net-realized; thousands of names fit no table cell).
		wideHeader: []string{"PORT GROUP", "SWITCH", "LAST GOOD"},
		wide: func(r record) []string {
			n := &r.(*networkRow).NetworkRecord
			return []string{dash(n.PortGroup), dash(n.Switch), strconv.FormatInt(n.LastGoodVersion, 10)}
		},
		decode: decodeRow[networkRow],
	})
}

type networkRow struct{ events.NetworkRecord }

func (n *networkRow) Namespace() string { return "" }
func (n *networkRow) Name() string      { return n.NetworkRecord.Name }
func (n *networkRow) Object() any       { return n.NetworkRecord }

func (n *networkRow) Row(time.Time) []string {
	r := &n.NetworkRecord
	status := statusCell(r.Status, r.Reason, r.Message)
	return []string{
		r.Name, strconv.Itoa(r.Spec.VLAN), r.Spec.CIDR, strconv.FormatInt(r.Version, 10),
		fmt.Sprintf("%d/%d", r.HostsReady, r.HostsInScope), strconv.Itoa(r.IPsUsed), dash(status),
	}
}

// statusCell is a STATUS cell: the status, then the reason and its message.
func statusCell(status, reason, message string) string {
	if reason != "" {
		status += ": " + reason
		if message != "" {
			status += " (" + message + ")"
		}
	}
	return status
}
