package events

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// Streams. Each domain has one JetStream stream whose subjects are the
// domain's events; shared/bus declares them from these names.
const (
	StreamPods       = "PODS"
	StreamImages     = "IMAGES"
	StreamNetworks   = "NETWORKS"
	StreamMigrations = "MIGRATIONS"
	StreamHosts      = "HOSTS"
	StreamVMs        = "VMS"
	// StreamGuestClusters carries the guestcluster.* domain.
	StreamGuestClusters = "GUESTCLUSTERS"

	StreamPodsSubjects       = "pv.pod.>"
	StreamImagesSubjects     = "pv.image.>"
	StreamNetworksSubjects   = "pv.network.>"
	StreamMigrationsSubjects = "pv.migration.>"
	StreamHostsSubjects      = "pv.host.>"
	StreamVMsSubjects        = "pv.vm.>"

	StreamGuestClustersSubjects = "pv.guestcluster.>"
)

// StreamSubjects maps every stream name to the subject filter it captures.
func StreamSubjects() map[string]string {
	return map[string]string{
		StreamPods:       StreamPodsSubjects,
		StreamImages:     StreamImagesSubjects,
		StreamNetworks:   StreamNetworksSubjects,
		StreamMigrations: StreamMigrationsSubjects,
		StreamHosts:      StreamHostsSubjects,
		StreamVMs:        StreamVMsSubjects,

		StreamGuestClusters: StreamGuestClustersSubjects,
	}
}

// CloudEvent types. The version is the last element of the type and never
// appears in the NATS subject: a breaking change adds a ".v2" type beside the
// ".v1" one on the same subject, so consumers can move at their own pace.
const (
	TypePodRequested          = "io.podvisor.pod.requested.v1"
	TypePodAccepted           = "io.podvisor.pod.accepted.v1"
	TypePodRejected           = "io.podvisor.pod.rejected.v1"
	TypePodScheduled          = "io.podvisor.pod.scheduled.v1"
	TypePodUnschedulable      = "io.podvisor.pod.unschedulable.v1"
	TypePodImagesReady        = "io.podvisor.pod.images.ready.v1"
	TypePodImagesFailed       = "io.podvisor.pod.images.failed.v1"
	TypePodImagesRetrying     = "io.podvisor.pod.images.retrying.v1"
	TypePodNetworkAttached    = "io.podvisor.pod.network.attached.v1"
	TypePodNetworkFailed      = "io.podvisor.pod.network.failed.v1"
	TypePodVMReady            = "io.podvisor.pod.vm.ready.v1"
	TypePodRunning            = "io.podvisor.pod.running.v1"
	TypePodFailed             = "io.podvisor.pod.failed.v1"
	TypePodDeleteRequested    = "io.podvisor.pod.delete.requested.v1"
	TypePodDeleted            = "io.podvisor.pod.deleted.v1"
	TypePodEvicted            = "io.podvisor.pod.evicted.v1"
	TypePodContainersReported = "io.podvisor.pod.containers.reported.v1"

	TypeImagePulled  = "io.podvisor.image.pulled.v1"
	TypeImageEvicted = "io.podvisor.image.evicted.v1"

	TypeNetworkDeclared         = "io.podvisor.network.declared.v1"
	TypeNetworkRealized         = "io.podvisor.network.realized.v1"
	TypeNetworkHostReady        = "io.podvisor.network.host.ready.v1"
	TypeNetworkHostFailed       = "io.podvisor.network.host.failed.v1"
	TypeNetworkRolledBack       = "io.podvisor.network.rolledback.v1"
	TypeNetworkHostDesired      = "io.podvisor.network.host.desired.v1"
	TypeNetworkHostApplied      = "io.podvisor.network.host.applied.v1"
	TypeNetworkRestoreRequested = "io.podvisor.network.restore.requested.v1"
	TypeNetworkDeleteRequested  = "io.podvisor.network.delete.requested.v1"
	TypeNetworkDeleteRejected   = "io.podvisor.network.delete.rejected.v1"
	TypeNetworkDeleted          = "io.podvisor.network.deleted.v1"

	TypeNetworkServiceDeclared        = "io.podvisor.network.service.declared.v1"
	TypeNetworkServiceDeleteRequested = "io.podvisor.network.service.delete.requested.v1"
	TypeNetworkManagementCloned       = "io.podvisor.network.management.cloned.v1"
	TypeNetworkManagementRepaired     = "io.podvisor.network.management.repaired.v1"
	TypeNetworkManagementFailed       = "io.podvisor.network.management.failed.v1"
	TypeNetworkDataRegisterRequested  = "io.podvisor.network.data.register.requested.v1"
	TypeNetworkDataSetRequested       = "io.podvisor.network.data.set.requested.v1"
	TypeNetworkDataRemoveRequested    = "io.podvisor.network.data.remove.requested.v1"

	TypeMigrationRequested       = "io.podvisor.migration.requested.v1"
	TypeMigrationTargetReserved  = "io.podvisor.migration.target.reserved.v1"
	TypeMigrationRejected        = "io.podvisor.migration.rejected.v1"
	TypeMigrationProgress        = "io.podvisor.migration.progress.v1"
	TypeMigrationCompleted       = "io.podvisor.migration.completed.v1"
	TypeMigrationFailed          = "io.podvisor.migration.failed.v1"
	TypeMigrationCancelRequested = "io.podvisor.migration.cancel.requested.v1"
	TypeMigrationCancelled       = "io.podvisor.migration.cancelled.v1"

	TypeHostDiscovered        = "io.podvisor.host.discovered.v1"
	TypeHostUpdated           = "io.podvisor.host.updated.v1"
	TypeHostLost              = "io.podvisor.host.lost.v1"
	TypeHostRecovered         = "io.podvisor.host.recovered.v1"
	TypeHostCordoned          = "io.podvisor.host.cordoned.v1"
	TypeHostUncordoned        = "io.podvisor.host.uncordoned.v1"
	TypeHostCordonRequested   = "io.podvisor.host.cordon.requested.v1"
	TypeHostUncordonRequested = "io.podvisor.host.uncordon.requested.v1"
	TypeHostDrainRequested    = "io.podvisor.host.drain.requested.v1"
	TypeHostDrained           = "io.podvisor.host.drained.v1"

	TypeVMDeclared                = "io.podvisor.vm.declared.v1"
	TypeVMDeleteRequested         = "io.podvisor.vm.delete.requested.v1"
	TypeVMMigrateRequested        = "io.podvisor.vm.migrate.requested.v1"
	TypeVMClassDeclared           = "io.podvisor.vm.class.declared.v1"
	TypeVMClassDeleteRequested    = "io.podvisor.vm.class.delete.requested.v1"
	TypeVMImageDeclared           = "io.podvisor.vm.image.declared.v1"
	TypeVMImageDeleteRequested    = "io.podvisor.vm.image.delete.requested.v1"
	TypeVMRejected                = "io.podvisor.vm.rejected.v1"
	TypeVMAccepted                = "io.podvisor.vm.accepted.v1"
	TypeVMScheduled               = "io.podvisor.vm.scheduled.v1"
	TypeVMUnschedulable           = "io.podvisor.vm.unschedulable.v1"
	TypeVMNetworkAttached         = "io.podvisor.vm.network.attached.v1"
	TypeVMNetworkFailed           = "io.podvisor.vm.network.failed.v1"
	TypeVMStatusChanged           = "io.podvisor.vm.status.v1"
	TypeVMMigrationTargetReserved = "io.podvisor.vm.migration.target.reserved.v1"
	TypeVMMigrationAdmitted       = "io.podvisor.vm.migration.admitted.v1"
	TypeVMMigrated                = "io.podvisor.vm.migrated.v1"
	TypeVMEvicted                 = "io.podvisor.vm.evicted.v1"
	TypeVMDeleted                 = "io.podvisor.vm.deleted.v1"

	TypeGuestClusterRequested       = "io.podvisor.guestcluster.requested.v1"
	TypeGuestClusterReady           = "io.podvisor.guestcluster.ready.v1"
	TypeGuestClusterFailed          = "io.podvisor.guestcluster.failed.v1"
	TypeGuestClusterDeleteRequested = "io.podvisor.guestcluster.delete.requested.v1"
	TypeGuestClusterDeleted         = "io.podvisor.guestcluster.deleted.v1"
	TypeGuestClusterCheckRequested  = "io.podvisor.guestcluster.check.requested.v1"
	TypeGuestClusterCompatibility   = "io.podvisor.guestcluster.compatibility.v1"
)

// NATS subjects, one per event (all versions of an event share it).
const (
	SubjectPodRequested          = "pv.pod.requested"
	SubjectPodAccepted           = "pv.pod.accepted"
	SubjectPodRejected           = "pv.pod.rejected"
	SubjectPodScheduled          = "pv.pod.scheduled"
	SubjectPodUnschedulable      = "pv.pod.unschedulable"
	SubjectPodImagesReady        = "pv.pod.images.ready"
	SubjectPodImagesFailed       = "pv.pod.images.failed"
	SubjectPodImagesRetrying     = "pv.pod.images.retrying"
	SubjectPodNetworkAttached    = "pv.pod.network.attached"
	SubjectPodNetworkFailed      = "pv.pod.network.failed"
	SubjectPodVMReady            = "pv.pod.vm.ready"
	SubjectPodRunning            = "pv.pod.running"
	SubjectPodFailed             = "pv.pod.failed"
	SubjectPodDeleteRequested    = "pv.pod.delete.requested"
	SubjectPodDeleted            = "pv.pod.deleted"
	SubjectPodEvicted            = "pv.pod.evicted"
	SubjectPodContainersReported = "pv.pod.containers.reported"

	SubjectImagePulled  = "pv.image.pulled"
	SubjectImageEvicted = "pv.image.evicted"

	SubjectNetworkDeclared         = "pv.network.declared"
	SubjectNetworkRealized         = "pv.network.realized"
	SubjectNetworkHostReady        = "pv.network.host.ready"
	SubjectNetworkHostFailed       = "pv.network.host.failed"
	SubjectNetworkRolledBack       = "pv.network.rolledback"
	SubjectNetworkHostDesired      = "pv.network.host.desired" // .<host>: SubjectNetworkHostDesiredFor
	SubjectNetworkHostApplied      = "pv.network.host.applied"
	SubjectNetworkRestoreRequested = "pv.network.restore.requested"
	SubjectNetworkDeleteRequested  = "pv.network.delete.requested"
	SubjectNetworkDeleteRejected   = "pv.network.delete.rejected"
	SubjectNetworkDeleted          = "pv.network.deleted"

	SubjectNetworkServiceDeclared        = "pv.network.service.declared"
	SubjectNetworkServiceDeleteRequested = "pv.network.service.delete.requested"
	SubjectNetworkManagementCloned       = "pv.network.management.cloned"
	SubjectNetworkManagementRepaired     = "pv.network.management.repaired"
	SubjectNetworkManagementFailed       = "pv.network.management.failed"
	SubjectNetworkDataRegisterRequested  = "pv.network.data.register.requested"
	SubjectNetworkDataSetRequested       = "pv.network.data.set.requested"
	SubjectNetworkDataRemoveRequested    = "pv.network.data.remove.requested"

	SubjectMigrationRequested       = "pv.migration.requested"
	SubjectMigrationTargetReserved  = "pv.migration.target.reserved"
	SubjectMigrationRejected        = "pv.migration.rejected"
	SubjectMigrationProgress        = "pv.migration.progress"
	SubjectMigrationCompleted       = "pv.migration.completed"
	SubjectMigrationFailed          = "pv.migration.failed"
	SubjectMigrationCancelRequested = "pv.migration.cancel.requested"
	SubjectMigrationCancelled       = "pv.migration.cancelled"

	SubjectHostDiscovered        = "pv.host.discovered"
	SubjectHostUpdated           = "pv.host.updated"
	SubjectHostLost              = "pv.host.lost"
	SubjectHostRecovered         = "pv.host.recovered"
	SubjectHostCordoned          = "pv.host.cordoned"
	SubjectHostUncordoned        = "pv.host.uncordoned"
	SubjectHostCordonRequested   = "pv.host.cordon.requested"
	SubjectHostUncordonRequested = "pv.host.uncordon.requested"
	SubjectHostDrainRequested    = "pv.host.drain.requested"
	SubjectHostDrained           = "pv.host.drained"

	SubjectVMDeclared                = "pv.vm.declared"
	SubjectVMDeleteRequested         = "pv.vm.delete.requested"
	SubjectVMMigrateRequested        = "pv.vm.migrate.requested"
	SubjectVMClassDeclared           = "pv.vm.class.declared"
	SubjectVMClassDeleteRequested    = "pv.vm.class.delete.requested"
	SubjectVMImageDeclared           = "pv.vm.image.declared"
	SubjectVMImageDeleteRequested    = "pv.vm.image.delete.requested"
	SubjectVMRejected                = "pv.vm.rejected"
	SubjectVMAccepted                = "pv.vm.accepted"
	SubjectVMScheduled               = "pv.vm.scheduled"
	SubjectVMUnschedulable           = "pv.vm.unschedulable"
	SubjectVMNetworkAttached         = "pv.vm.network.attached"
	SubjectVMNetworkFailed           = "pv.vm.network.failed"
	SubjectVMStatusChanged           = "pv.vm.status"
	SubjectVMMigrationTargetReserved = "pv.vm.migration.target.reserved"
	SubjectVMMigrationAdmitted       = "pv.vm.migration.admitted"
	SubjectVMMigrated                = "pv.vm.migrated"
	SubjectVMEvicted                 = "pv.vm.evicted"
	SubjectVMDeleted                 = "pv.vm.deleted"

	SubjectGuestClusterRequested       = "pv.guestcluster.requested"
	SubjectGuestClusterReady           = "pv.guestcluster.ready"
	SubjectGuestClusterFailed          = "pv.guestcluster.failed"
	SubjectGuestClusterDeleteRequested = "pv.guestcluster.delete.requested"
	SubjectGuestClusterDeleted         = "pv.guestcluster.deleted"
	SubjectGuestClusterCheckRequested  = "pv.guestcluster.check.requested"
	SubjectGuestClusterCompatibility   = "pv.guestcluster.compatibility"
)

// MaxEventSize is the largest CloudEvent data payload the bus carries
// (DESIGN: 64 KiB per event). Decode refuses anything larger so a runaway
// producer is caught at the first consumer rather than deep in a handler.
const MaxEventSize = 64 << 10

// Payload is what every event data struct implements: Validate checks the
// payload as a whole (field paths in the error) and ObjectKey names the object
// the event is about, which producers use as the CloudEvent subject attribute
// and consumers as their work-queue key.
type Payload interface {
	Validate() error
	ObjectKey() string
}

// Kind describes one CloudEvent type of the catalog: its NATS subject, the
// stream that stores it and a constructor for a zero payload to decode into.
type Kind struct {
	Type    string
	Subject string
	Stream  string
	// New returns a pointer to a new zero payload struct (for example
	// *PodRequested); it always implements Payload.
	New func() any
	// PerObject: each event travels on Subject.<object key> (SubjectFor),
	// so a consumer that wants one object's events filters on its subject
	// and the server delivers it nothing else (network.host.desired: one
	// subject per host).
	PerObject bool
}

// SubjectFor is the NATS subject of the event about objectKey.
func (k Kind) SubjectFor(objectKey string) string {
	if k.PerObject {
		return k.Subject + "." + objectKey
	}
	return k.Subject
}

// SubjectFilter matches every event of the kind: Subject, or Subject.> for
// a per-object kind.
func (k Kind) SubjectFilter() string {
	if k.PerObject {
		return k.Subject + ".>"
	}
	return k.Subject
}

// Carries reports whether subject is one the kind's events travel on.
func (k Kind) Carries(subject string) bool {
	if k.PerObject {
		return len(subject) > len(k.Subject)+1 && strings.HasPrefix(subject, k.Subject+".")
	}
	return subject == k.Subject
}

// perObject marks a kind as travelling on one subject per object.
func perObject(k Kind) Kind {
	k.PerObject = true
	return k
}

// SubjectNetworkHostDesiredFor is the subject of host's final network
// state: its agent consumes that subject only.
func SubjectNetworkHostDesiredFor(host string) string { return SubjectNetworkHostDesired + "." + host }

func kind[T any, P interface {
	*T
	Payload
}](ceType, subject, stream string) Kind {
	return Kind{Type: ceType, Subject: subject, Stream: stream, New: func() any { return P(new(T)) }}
}

// catalog is the single list of events; everything else derives from it.
var catalog = []Kind{
	kind[PodRequested](TypePodRequested, SubjectPodRequested, StreamPods),
	kind[PodAccepted](TypePodAccepted, SubjectPodAccepted, StreamPods),
	kind[PodRejected](TypePodRejected, SubjectPodRejected, StreamPods),
	kind[PodScheduled](TypePodScheduled, SubjectPodScheduled, StreamPods),
	kind[PodUnschedulable](TypePodUnschedulable, SubjectPodUnschedulable, StreamPods),
	kind[PodImagesReady](TypePodImagesReady, SubjectPodImagesReady, StreamPods),
	kind[PodImagesFailed](TypePodImagesFailed, SubjectPodImagesFailed, StreamPods),
	kind[PodImagesRetrying](TypePodImagesRetrying, SubjectPodImagesRetrying, StreamPods),
	kind[PodNetworkAttached](TypePodNetworkAttached, SubjectPodNetworkAttached, StreamPods),
	kind[PodNetworkFailed](TypePodNetworkFailed, SubjectPodNetworkFailed, StreamPods),
	kind[PodVMReady](TypePodVMReady, SubjectPodVMReady, StreamPods),
	kind[PodRunning](TypePodRunning, SubjectPodRunning, StreamPods),
	kind[PodFailed](TypePodFailed, SubjectPodFailed, StreamPods),
	kind[PodDeleteRequested](TypePodDeleteRequested, SubjectPodDeleteRequested, StreamPods),
	kind[PodDeleted](TypePodDeleted, SubjectPodDeleted, StreamPods),
	kind[PodEvicted](TypePodEvicted, SubjectPodEvicted, StreamPods),
	kind[PodContainersReported](TypePodContainersReported, SubjectPodContainersReported, StreamPods),

	kind[ImagePulled](TypeImagePulled, SubjectImagePulled, StreamImages),
	kind[ImageEvicted](TypeImageEvicted, SubjectImageEvicted, StreamImages),

	kind[NetworkDeclared](TypeNetworkDeclared, SubjectNetworkDeclared, StreamNetworks),
	kind[NetworkRealized](TypeNetworkRealized, SubjectNetworkRealized, StreamNetworks),
	kind[NetworkHostReady](TypeNetworkHostReady, SubjectNetworkHostReady, StreamNetworks),
	kind[NetworkHostFailed](TypeNetworkHostFailed, SubjectNetworkHostFailed, StreamNetworks),
	kind[NetworkRolledBack](TypeNetworkRolledBack, SubjectNetworkRolledBack, StreamNetworks),
	perObject(kind[NetworkHostDesired](TypeNetworkHostDesired, SubjectNetworkHostDesired, StreamNetworks)),
	kind[NetworkHostApplied](TypeNetworkHostApplied, SubjectNetworkHostApplied, StreamNetworks),
	kind[NetworkRestoreRequested](TypeNetworkRestoreRequested, SubjectNetworkRestoreRequested, StreamNetworks),
	kind[NetworkDeleteRequested](TypeNetworkDeleteRequested, SubjectNetworkDeleteRequested, StreamNetworks),
	kind[NetworkDeleteRejected](TypeNetworkDeleteRejected, SubjectNetworkDeleteRejected, StreamNetworks),
	kind[NetworkDeleted](TypeNetworkDeleted, SubjectNetworkDeleted, StreamNetworks),
	kind[NetworkServiceDeclared](TypeNetworkServiceDeclared, SubjectNetworkServiceDeclared, StreamNetworks),
	kind[NetworkServiceDeleteRequested](TypeNetworkServiceDeleteRequested, SubjectNetworkServiceDeleteRequested, StreamNetworks),
	kind[NetworkManagementCloned](TypeNetworkManagementCloned, SubjectNetworkManagementCloned, StreamNetworks),
	kind[NetworkManagementRepaired](TypeNetworkManagementRepaired, SubjectNetworkManagementRepaired, StreamNetworks),
	kind[NetworkManagementFailed](TypeNetworkManagementFailed, SubjectNetworkManagementFailed, StreamNetworks),
	kind[NetworkDataRegisterRequested](TypeNetworkDataRegisterRequested, SubjectNetworkDataRegisterRequested, StreamNetworks),
	kind[NetworkDataSetRequested](TypeNetworkDataSetRequested, SubjectNetworkDataSetRequested, StreamNetworks),
	kind[NetworkDataRemoveRequested](TypeNetworkDataRemoveRequested, SubjectNetworkDataRemoveRequested, StreamNetworks),

	kind[MigrationRequested](TypeMigrationRequested, SubjectMigrationRequested, StreamMigrations),
	kind[MigrationTargetReserved](TypeMigrationTargetReserved, SubjectMigrationTargetReserved, StreamMigrations),
	kind[MigrationRejected](TypeMigrationRejected, SubjectMigrationRejected, StreamMigrations),
	kind[MigrationProgress](TypeMigrationProgress, SubjectMigrationProgress, StreamMigrations),
	kind[MigrationCompleted](TypeMigrationCompleted, SubjectMigrationCompleted, StreamMigrations),
	kind[MigrationFailed](TypeMigrationFailed, SubjectMigrationFailed, StreamMigrations),
	kind[MigrationCancelRequested](TypeMigrationCancelRequested, SubjectMigrationCancelRequested, StreamMigrations),
	kind[MigrationCancelled](TypeMigrationCancelled, SubjectMigrationCancelled, StreamMigrations),

	kind[HostDiscovered](TypeHostDiscovered, SubjectHostDiscovered, StreamHosts),
	kind[HostUpdated](TypeHostUpdated, SubjectHostUpdated, StreamHosts),
	kind[HostLost](TypeHostLost, SubjectHostLost, StreamHosts),
	kind[HostRecovered](TypeHostRecovered, SubjectHostRecovered, StreamHosts),
	kind[HostCordoned](TypeHostCordoned, SubjectHostCordoned, StreamHosts),
	kind[HostUncordoned](TypeHostUncordoned, SubjectHostUncordoned, StreamHosts),
	kind[HostCordonRequested](TypeHostCordonRequested, SubjectHostCordonRequested, StreamHosts),
	kind[HostUncordonRequested](TypeHostUncordonRequested, SubjectHostUncordonRequested, StreamHosts),
	kind[HostDrainRequested](TypeHostDrainRequested, SubjectHostDrainRequested, StreamHosts),
	kind[HostDrained](TypeHostDrained, SubjectHostDrained, StreamHosts),

	kind[VMDeclared](TypeVMDeclared, SubjectVMDeclared, StreamVMs),
	kind[VMDeleteRequested](TypeVMDeleteRequested, SubjectVMDeleteRequested, StreamVMs),
	kind[VMMigrateRequested](TypeVMMigrateRequested, SubjectVMMigrateRequested, StreamVMs),
	kind[VMClassDeclared](TypeVMClassDeclared, SubjectVMClassDeclared, StreamVMs),
	kind[VMClassDeleteRequested](TypeVMClassDeleteRequested, SubjectVMClassDeleteRequested, StreamVMs),
	kind[VMImageDeclared](TypeVMImageDeclared, SubjectVMImageDeclared, StreamVMs),
	kind[VMImageDeleteRequested](TypeVMImageDeleteRequested, SubjectVMImageDeleteRequested, StreamVMs),
	kind[VMRejected](TypeVMRejected, SubjectVMRejected, StreamVMs),
	kind[VMAccepted](TypeVMAccepted, SubjectVMAccepted, StreamVMs),
	kind[VMScheduled](TypeVMScheduled, SubjectVMScheduled, StreamVMs),
	kind[VMUnschedulable](TypeVMUnschedulable, SubjectVMUnschedulable, StreamVMs),
	kind[VMNetworkAttached](TypeVMNetworkAttached, SubjectVMNetworkAttached, StreamVMs),
	kind[VMNetworkFailed](TypeVMNetworkFailed, SubjectVMNetworkFailed, StreamVMs),
	kind[VMStatusChanged](TypeVMStatusChanged, SubjectVMStatusChanged, StreamVMs),
	kind[VMMigrationTargetReserved](TypeVMMigrationTargetReserved, SubjectVMMigrationTargetReserved, StreamVMs),
	kind[VMMigrationAdmitted](TypeVMMigrationAdmitted, SubjectVMMigrationAdmitted, StreamVMs),
	kind[VMMigrated](TypeVMMigrated, SubjectVMMigrated, StreamVMs),
	kind[VMEvicted](TypeVMEvicted, SubjectVMEvicted, StreamVMs),
	kind[VMDeleted](TypeVMDeleted, SubjectVMDeleted, StreamVMs),

	kind[GuestClusterRequested](TypeGuestClusterRequested, SubjectGuestClusterRequested, StreamGuestClusters),
	kind[GuestClusterReady](TypeGuestClusterReady, SubjectGuestClusterReady, StreamGuestClusters),
	kind[GuestClusterFailed](TypeGuestClusterFailed, SubjectGuestClusterFailed, StreamGuestClusters),
	kind[GuestClusterDeleteRequested](TypeGuestClusterDeleteRequested, SubjectGuestClusterDeleteRequested, StreamGuestClusters),
	kind[GuestClusterDeleted](TypeGuestClusterDeleted, SubjectGuestClusterDeleted, StreamGuestClusters),
	kind[GuestClusterCheckRequested](TypeGuestClusterCheckRequested, SubjectGuestClusterCheckRequested, StreamGuestClusters),
	kind[GuestClusterCompatibility](TypeGuestClusterCompatibility, SubjectGuestClusterCompatibility, StreamGuestClusters),
}

var byType = func() map[string]Kind {
	m := make(map[string]Kind, len(catalog))
	for _, k := range catalog {
		if _, dup := m[k.Type]; dup {
			panic("events: duplicate type in catalog: " + k.Type)
		}
		m[k.Type] = k
	}
	return m
}()

// byPayload indexes the catalog by payload struct. A struct that served two
// versions of a type would be ambiguous, so the index keeps the first and
// KindOf callers name the type explicitly in that case.
var byPayload = func() map[reflect.Type]Kind {
	m := make(map[reflect.Type]Kind, len(catalog))
	for _, k := range catalog {
		t := reflect.TypeOf(k.New()).Elem()
		if _, dup := m[t]; !dup {
			m[t] = k
		}
	}
	return m
}()

// KindOf returns the catalog entry whose payload struct p is (a pointer to
// one or the struct itself): how a producer finds the type and subject of
// the event it publishes from the payload alone.
func KindOf(p any) (Kind, bool) {
	t := reflect.TypeOf(p)
	if t == nil {
		return Kind{}, false
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	k, ok := byPayload[t]
	return k, ok
}

// Kinds returns the whole catalog, sorted by type. The slice is a copy.
func Kinds() []Kind {
	out := append([]Kind(nil), catalog...)
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// Lookup returns the catalog entry of a CloudEvent type.
func Lookup(ceType string) (Kind, bool) {
	k, ok := byType[ceType]
	return k, ok
}

// ErrUnknownType is returned (wrapped) by Decode for a type outside the catalog.
var ErrUnknownType = errors.New("unknown event type")

// ErrTooLarge is returned (wrapped) by Decode for data over MaxEventSize.
var ErrTooLarge = errors.New("event data too large")

// Decode turns the data of a CloudEvent into its payload struct and returns a
// pointer to it (for example *PodAccepted). Decoding is strict: unknown or
// duplicate JSON fields, field names in the wrong case and trailing data are
// errors, also inside an embedded Kubernetes Pod, because a typo silently
// dropped is a misconfiguration nobody sees. The payload is then validated;
// both kinds of error name the offending field path.
func Decode(ceType string, data []byte) (any, error) {
	k, ok := Lookup(ceType)
	if !ok {
		return nil, fmt.Errorf("decode %q: %w", ceType, ErrUnknownType)
	}
	if len(data) > MaxEventSize {
		return nil, fmt.Errorf("decode %s: %w: %d bytes, limit %d", ceType, ErrTooLarge, len(data), MaxEventSize)
	}
	v := k.New()
	strict, err := decodeStrict(data, v)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", ceType, err)
	}
	if err := withStrict(strict, v.(Payload).Validate()); err != nil {
		return nil, fmt.Errorf("decode %s: %w", ceType, err)
	}
	return v, nil
}
