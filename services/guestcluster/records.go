package guestcluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// clusterRecord is a guest cluster's record as this controller keeps it
// in bucket guestclusters: events.GuestClusterRecord, which every client
// reads (its fields at the top level of the value, as always), and beside
// them the controller's own bookkeeping, in the same value so that one
// compare-and-set writes the spec and what goes with it. Clients decode
// the value as events.GuestClusterRecord and skip these fields (the
// records are decoded leniently everywhere); every write here goes
// through this type, so none drops them. A record written before they
// existed reads as generation 0 and no refusal.
type clusterRecord struct {
	events.GuestClusterRecord
	// Generation orders the requests the record took: the GUESTCLUSTERS
	// stream sequence of the guestcluster.requested whose spec Spec is,
	// or, once Deleting, of the guestcluster.delete.requested that marked
	// it, and GenerationAt when JetStream stored that request
	// (requestGeneration). A request's handler acts only while the record
	// holds its own generation or an older one (supersedes); the record's
	// tombstone keeps the deletion's once the record is gone
	// (tombstone.go).
	Generation   uint64    `json:"generation,omitempty"`
	GenerationAt time.Time `json:"generationAt,omitzero"`
	// RefusedWorkers are the worker VMs whose declaration the native VM
	// controller refused (vm.rejected) since the record took this
	// generation, by VM name. A replacement pass (resync, vm.deleted) does
	// not declare such a worker again until the next generation (a new
	// request is a new try: storing it clears them) or until what the
	// refusal found missing exists (workerRefusal.lifted). The worker's
	// node and condition WorkersAccepted tell each refusal.
	RefusedWorkers map[string]workerRefusal `json:"refusedWorkers,omitempty"`
}

// generation is a request's place in the order of a guest cluster's
// requests: its GUESTCLUSTERS stream sequence and when JetStream stored
// it.
type generation struct {
	seq uint64
	at  time.Time
}

// requestGeneration is the generation of the request m carries. A
// redelivery has the sequence and time of the first delivery.
func requestGeneration(m *bus.Message) generation {
	return generation{seq: m.StreamSeq, at: m.Published}
}

// supersedes reports whether the record holds the spec of a request newer
// than g: later in the stream and stored no earlier. The time keeps a
// GUESTCLUSTERS stream made anew, whose sequences begin again at 1, from
// making every later request look old; the sequence alone orders requests
// of one stream whatever the servers' clocks. A redelivery of the request
// the record holds is not superseded: it finishes what its first delivery
// began.
func (r *clusterRecord) supersedes(g generation) bool { return r.generation().after(g) }

// generation is the generation of the request the record took last.
func (r *clusterRecord) generation() generation {
	return generation{seq: r.Generation, at: r.GenerationAt}
}

// after reports whether g is of a request stored after o (supersedes).
func (g generation) after(o generation) bool { return g.seq > o.seq && !g.at.Before(o.at) }

// errSuperseded stops a request's handler: a newer request of the guest
// cluster (its deletion included) was stored, and that one's handler
// converges the cluster. The older one is acked and does nothing more.
var errSuperseded = errors.New("a newer request of the guest cluster was stored")

// conditionWorkersAccepted is the guest cluster's condition on its worker
// VMs' declarations: False while the native VM controller refuses one that
// the spec wants (reason: the first refusal's; message: each refused
// worker with its reason, field and what would make it go), True once
// none is refused. It is set only once a refusal happened.
const conditionWorkersAccepted = "WorkersAccepted"

// Reasons of vm.rejected this controller reads (the native VM
// controller's, services/provisioner/nativevm).
const (
	// vmReasonNotFound: the declaration names a class or image with no
	// record (Field spec.className or spec.imageName), or a deletion asks
	// for a VM that does not exist (Field name).
	vmReasonNotFound = "NotFound"
	// vmReasonDeleting: the VM is being deleted; its vm.deleted has the
	// worker declared again.
	vmReasonDeleting = "Deleting"
)

// workerRefusal is a refusal of a worker VM's declaration, as vm.rejected
// told it.
type workerRefusal struct {
	Reason  string `json:"reason"`
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

// missing names the object the refusal found missing, when a declared one
// could make the declaration succeed: the VirtualMachineClass or
// VirtualMachineImage that decl names. Other refusals (an invalid field)
// only a new request can change.
func (f workerRefusal) missing(decl events.VirtualMachine) (kind, name string) {
	if f.Reason != vmReasonNotFound {
		return "", ""
	}
	switch f.Field {
	case "spec.className":
		return events.KindVirtualMachineClass, decl.Spec.ClassName
	case "spec.imageName":
		return events.KindVirtualMachineImage, decl.Spec.ImageName
	}
	return "", ""
}

// tell is what the refused worker's node says: Rejected, the refusal's
// reason, field and message, and what has it declared again. made: its VM
// exists (with an earlier declaration, which it keeps).
func (f workerRefusal) tell(decl events.VirtualMachine, made bool) string {
	var b strings.Builder
	b.WriteString("Rejected (" + f.Reason)
	if f.Field != "" {
		b.WriteString(", field " + f.Field)
	}
	fmt.Fprintf(&b, "): %s; declared again when the guest cluster is applied again", f.Message)
	if kind, name := f.missing(decl); kind != "" {
		fmt.Fprintf(&b, " or %s %s is declared", kind, name)
	}
	if made {
		b.WriteString("; the VM keeps its earlier declaration")
	}
	return b.String()
}
