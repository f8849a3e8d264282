package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bytesize"
)

// describeGuestCluster shows a guest cluster as its controller records it,
// then the events about it.
func describeGuestCluster(ctx context.Context, b *bus.Bus, out io.Writer, ns, name string) error {
	var r events.GuestClusterRecord
	if err := getRecord(ctx, b, events.BucketGuestClusters, events.GuestClusterRecordKey(ns, name),
		"guestcluster "+events.GuestClusterKey(ns, name), &r); err != nil {
		return err
	}
	printGuestCluster(out, &r)
	// The request that made it is stored before its record, and may have
	// waited behind others: a minute before the record, not a second.
	return describeEvents(ctx, b, out, events.GuestClusterKey(ns, name), r.CreatedAt.Add(-time.Minute), events.StreamGuestClusters)
}

// printGuestCluster lays out a guest cluster's record: version, phase and
// why, endpoint, conditions (Compatible, WorkersAccepted), then each
// control-plane VM and worker node with its state. A node that is not
// Ready says why as its controller wrote it: a refused worker's says
// Rejected with the refusal's reason, field and message.
func printGuestCluster(out io.Writer, r *events.GuestClusterRecord) {
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("Namespace", r.Namespace)
	f.add("Version", r.Spec.Version)
	f.add("Created", r.CreatedAt.Format(time.RFC3339))
	f.status("Phase", r.Phase, r.Reason, r.Message)
	if r.DeletionRequestedAt != nil {
		f.add("Deletion requested", r.DeletionRequestedAt.Format(time.RFC3339))
	}
	f.add("Endpoint", dash(r.Endpoint))
	kubeconfig := "-"
	if r.HasKubeconfig {
		kubeconfig = fmt.Sprintf("podvisor get guestcluster %s -n %s --kubeconfig (admins)", r.Name, r.Namespace)
	}
	f.add("Kubeconfig", kubeconfig)
	f.add("Identity", dash(r.Identity))
	f.add("Network", r.Spec.Network)
	f.add("Namespaces", strings.Join(r.AllowedNamespaces(), ", "))
	f.add("Pods", r.Pods)
	f.section("Conditions")
	for _, c := range r.Conditions {
		f.row(c.Type, c.Status, c.Time.Format(time.TimeOnly), dash(c.Reason), c.Message)
	}
	f.section("Control Planes " + nodeGroup(r.ReadyControlPlanes, r.Spec.ControlPlane))
	for _, n := range r.ControlPlanes {
		f.node(n)
	}
	f.section("Workers " + nodeGroup(r.ReadyWorkers, r.Spec.Workers))
	for _, n := range r.Workers {
		f.node(n)
	}
	f.flush()
}

// nodeGroup says how many of a group of a guest cluster's VMs are ready
// of those its spec asks for, and of which class and image.
func nodeGroup(ready int, g events.GuestClusterNodes) string {
	return fmt.Sprintf("(%d/%d ready; class %s, image %s)", ready, g.Replicas, dash(g.ClassName), g.Image())
}

// node adds one node of a guest cluster: where it runs when it is Ready,
// its controller's word on it otherwise.
func (f *fields) node(n events.GuestNode) {
	if !n.Ready {
		f.row(n.Name, "NotReady", dash(n.ClassName), dash(n.Message))
		return
	}
	where := n.Host
	if len(n.IPs) > 0 {
		where += " (" + strings.Join(n.IPs, ", ") + ")"
	}
	f.row(n.Name, "Ready", dash(n.ClassName), fmt.Sprintf("on %s, %d vCPU, %s", where, n.CPUs, bytesize.Short(n.MemoryBytes)))
}
