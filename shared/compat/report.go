package compat

import (
	"context"
	"fmt"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

// GuestCluster names the guest cluster being checked and where its
// result is reported.
type GuestCluster struct {
	Namespace, Name, Version string
	// Cluster is the compute cluster the guest cluster's VMs run in: the
	// vCenter event is posted on it.
	Cluster types.ManagedObjectReference
	// Trigger is events.CompatTriggerCreate, Upgrade or Request.
	Trigger string
	// CheckID correlates a request's answer.
	CheckID string
}

// CheckGuestCluster computes the check of a guest cluster version against
// the infrastructure's and the vCenter's offers, posts the result as a
// vCenter event on its cluster, and returns the guestcluster.compatibility
// payload to publish. The result says Compatible false, naming each unmet
// requirement, when the create or upgrade must be refused. An error means
// the check could not be made (vCenter unreachable, unknown version).
func CheckGuestCluster(ctx context.Context, vc *vim25.Client, gc GuestCluster) (*events.GuestClusterCompatibility, error) {
	req, err := GuestClusterRequires(gc.Version)
	if err != nil {
		return nil, err
	}
	sddc, err := SDDCOffers(ctx, vc)
	if err != nil {
		return nil, err
	}
	res := Check(req, InfrastructureOffers(), sddc)
	out := &events.GuestClusterCompatibility{Namespace: gc.Namespace, Name: gc.Name, Version: gc.Version, CheckID: gc.CheckID,
		Trigger: gc.Trigger, Compatible: res.Compatible, Unmet: res.Unmet, Offers: res.Offers,
		Message: res.Message(fmt.Sprintf("guest cluster %s/%s %s", gc.Namespace, gc.Name, gc.Version))}
	key, err := Report(ctx, vc, gc.Cluster, out.Message, res.Compatible)
	if err != nil {
		out.Message += " (the vCenter event could not be posted: " + err.Error() + ")"
	}
	out.VCenterEventKey = key
	return out, nil
}

// Report posts message as a vCenter event on a compute cluster: an info
// event when compatible, a warning otherwise (`govc events <cluster>`
// lists it). It returns the event's key.
func Report(ctx context.Context, vc *vim25.Client, cluster types.ManagedObjectReference, message string, ok bool) (int32, error) {
	var cl mo.ComputeResource
	if err := property.DefaultCollector(vc).RetrieveOne(ctx, cluster, []string{"name", "parent"}, &cl); err != nil {
		return 0, fmt.Errorf("cluster %s: %w", cluster.Value, err)
	}
	dc, err := datacenterOf(ctx, vc, cluster)
	if err != nil {
		return 0, err
	}
	var dcm mo.Datacenter
	if err := property.DefaultCollector(vc).RetrieveOne(ctx, dc, []string{"name"}, &dcm); err != nil {
		return 0, err
	}
	severity := string(types.EventEventSeverityInfo)
	if !ok {
		severity = string(types.EventEventSeverityWarning)
	}
	ev := &types.EventEx{
		EventTypeId: "io.podvisor.guestcluster.compatibility",
		Severity:    severity,
		Message:     message,
		ObjectId:    cluster.Value,
		ObjectType:  cluster.Type,
		ObjectName:  cl.Name,
		Event: types.Event{
			FullFormattedMessage: message,
			UserName:             "podvisor",
			ComputeResource:      &types.ComputeResourceEventArgument{EntityEventArgument: types.EntityEventArgument{Name: cl.Name}, ComputeResource: cluster},
			Datacenter:           &types.DatacenterEventArgument{EntityEventArgument: types.EntityEventArgument{Name: dcm.Name}, Datacenter: dc},
		},
	}
	m := event.NewManager(vc)
	if err := m.PostEvent(ctx, ev); err != nil {
		return 0, fmt.Errorf("post vCenter event on %s: %w", cl.Name, err)
	}
	// PostEvent answers nothing: find the event to learn its key.
	evs, err := m.QueryEvents(ctx, types.EventFilterSpec{Entity: &types.EventFilterSpecByEntity{Entity: cluster, Recursion: types.EventFilterSpecRecursionOptionSelf},
		EventTypeId: []string{ev.EventTypeId}})
	if err != nil {
		return 0, nil
	}
	var key int32
	for _, e := range evs {
		if e.GetEvent().FullFormattedMessage == message && e.GetEvent().Key > key {
			key = e.GetEvent().Key
		}
	}
	return key, nil
}

func datacenterOf(ctx context.Context, vc *vim25.Client, ref types.ManagedObjectReference) (types.ManagedObjectReference, error) {
	for ref.Type != "Datacenter" {
		var me mo.ManagedEntity
		if err := property.DefaultCollector(vc).RetrieveOne(ctx, ref, []string{"parent"}, &me); err != nil || me.Parent == nil {
			return types.ManagedObjectReference{}, fmt.Errorf("datacenter of %s: %v", ref.Value, err)
		}
		ref = *me.Parent
	}
	return ref, nil
}
