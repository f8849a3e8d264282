package events

import (
	"slices"
	"strings"
)

// Publishers. A CloudEvent type is published by the services that own the
// fact (DESIGN "Ownership") or, for a request, by any client. The NATS
// permissions of every identity and the consumers' check of the CloudEvent
// source both derive from this one table, so a type added to the catalog
// without an entry here fails TestEveryTypeHasAPublisher rather than becoming
// a subject nobody may publish.
const (
	// PublisherClient marks a request: any client may publish it (the CLI,
	// the nats CLI, another system), with any source.
	PublisherClient = "client"

	PublisherProvisioner = "provisioner"
	PublisherScheduler   = "scheduler"
	PublisherImageCache  = "imagecache"
	PublisherNetConfig   = "netconfig"
	PublisherMigration   = "migration"
	// PublisherHostAgent is the per-host agent (one identity shared by
	// every host's agent, or one minted per host with its permissions).
	PublisherHostAgent = "hostagent"
	// PublisherGuestCluster is the guest cluster controller (supervisor
	// side of guest clusters): it runs the compatibility checks and asks
	// for pods (and their deletion) on behalf of a guest cluster.
	PublisherGuestCluster = "guestcluster"
)

// SourcePrefix starts the CloudEvent source of every podvisor service:
// podvisor/<service>.
const SourcePrefix = "podvisor/"

// publishers lists who may publish each type. A type with several entries
// is both a request and something a service asks for on a person's behalf
// (migration asks for the migrations of a drain).
var publishers = map[string][]string{
	TypePodRequested:          {PublisherClient, PublisherGuestCluster},
	TypePodAccepted:           {PublisherProvisioner},
	TypePodRejected:           {PublisherProvisioner},
	TypePodScheduled:          {PublisherScheduler},
	TypePodUnschedulable:      {PublisherScheduler},
	TypePodImagesReady:        {PublisherImageCache},
	TypePodImagesFailed:       {PublisherImageCache},
	TypePodImagesRetrying:     {PublisherImageCache},
	TypePodNetworkAttached:    {PublisherNetConfig},
	TypePodNetworkFailed:      {PublisherNetConfig},
	TypePodRunning:            {PublisherProvisioner},
	TypePodFailed:             {PublisherProvisioner},
	TypePodDeleteRequested:    {PublisherClient, PublisherGuestCluster},
	TypePodDeleted:            {PublisherProvisioner},
	TypePodEvicted:            {PublisherMigration},
	TypePodVMReady:            {PublisherProvisioner},
	TypePodContainersReported: {PublisherHostAgent},

	TypeImagePulled:  {PublisherImageCache},
	TypeImageEvicted: {PublisherImageCache},

	TypeNetworkDeclared:               {PublisherClient},
	TypeNetworkRealized:               {PublisherNetConfig},
	TypeNetworkHostReady:              {PublisherNetConfig},
	TypeNetworkHostFailed:             {PublisherNetConfig},
	TypeNetworkRolledBack:             {PublisherNetConfig},
	TypeNetworkHostDesired:            {PublisherNetConfig},
	TypeNetworkHostApplied:            {PublisherHostAgent},
	TypeNetworkRestoreRequested:       {PublisherClient},
	TypeNetworkDeleteRequested:        {PublisherClient},
	TypeNetworkDeleteRejected:         {PublisherNetConfig},
	TypeNetworkDeleted:                {PublisherNetConfig},
	TypeNetworkServiceDeclared:        {PublisherClient},
	TypeNetworkServiceDeleteRequested: {PublisherClient},
	TypeNetworkManagementCloned:       {PublisherNetConfig},
	TypeNetworkManagementRepaired:     {PublisherNetConfig},
	TypeNetworkManagementFailed:       {PublisherNetConfig},
	TypeNetworkDataRegisterRequested:  {PublisherClient},
	TypeNetworkDataSetRequested:       {PublisherClient},
	TypeNetworkDataRemoveRequested:    {PublisherClient},

	TypeMigrationRequested:       {PublisherClient, PublisherMigration},
	TypeMigrationTargetReserved:  {PublisherScheduler},
	TypeMigrationRejected:        {PublisherScheduler, PublisherMigration},
	TypeMigrationProgress:        {PublisherMigration},
	TypeMigrationCompleted:       {PublisherMigration},
	TypeMigrationFailed:          {PublisherMigration},
	TypeMigrationCancelRequested: {PublisherClient},
	TypeMigrationCancelled:       {PublisherMigration},

	TypeHostDiscovered:        {PublisherScheduler},
	TypeHostUpdated:           {PublisherScheduler},
	TypeHostLost:              {PublisherScheduler},
	TypeHostRecovered:         {PublisherScheduler},
	TypeHostCordonRequested:   {PublisherClient},
	TypeHostUncordonRequested: {PublisherClient},
	TypeHostCordoned:          {PublisherMigration}, // on a cordon request, and a drain
	TypeHostUncordoned:        {PublisherMigration},
	TypeHostDrainRequested:    {PublisherClient},
	TypeHostDrained:           {PublisherMigration},

	TypeGuestClusterRequested:       {PublisherClient},
	TypeGuestClusterReady:           {PublisherGuestCluster},
	TypeGuestClusterFailed:          {PublisherGuestCluster},
	TypeGuestClusterDeleteRequested: {PublisherClient},
	TypeGuestClusterDeleted:         {PublisherGuestCluster},
	// Native VMs: a guest cluster's controller declares its VMs like any
	// client.
	TypeVMDeclared:                {PublisherClient, PublisherGuestCluster},
	TypeVMDeleteRequested:         {PublisherClient, PublisherGuestCluster},
	TypeVMMigrateRequested:        {PublisherClient, PublisherMigration}, // `podvisor migrate vm`, and a drain
	TypeVMClassDeclared:           {PublisherClient},
	TypeVMClassDeleteRequested:    {PublisherClient},
	TypeVMImageDeclared:           {PublisherClient},
	TypeVMImageDeleteRequested:    {PublisherClient},
	TypeVMRejected:                {PublisherProvisioner},
	TypeVMAccepted:                {PublisherProvisioner},
	TypeVMScheduled:               {PublisherScheduler},
	TypeVMUnschedulable:           {PublisherScheduler},
	TypeVMNetworkAttached:         {PublisherNetConfig},
	TypeVMNetworkFailed:           {PublisherNetConfig},
	TypeVMStatusChanged:           {PublisherProvisioner},
	TypeVMMigrationTargetReserved: {PublisherScheduler},
	TypeVMMigrationAdmitted:       {PublisherMigration},
	// Relocated (provisioner), refused before relocating (scheduler), or
	// ended while queued under the migration limits (migration).
	TypeVMMigrated: {PublisherProvisioner, PublisherScheduler, PublisherMigration},
	TypeVMEvicted:  {PublisherMigration},
	TypeVMDeleted:  {PublisherProvisioner},

	TypeGuestClusterCheckRequested: {PublisherClient},
	TypeGuestClusterCompatibility:  {PublisherGuestCluster},
}

// Publishers returns who may publish a CloudEvent type: service names and/or
// PublisherClient. Nil for a type outside the catalog.
func Publishers(ceType string) []string {
	return slices.Clone(publishers[ceType])
}

// IsRequest reports whether clients may publish the type.
func IsRequest(ceType string) bool {
	return slices.Contains(publishers[ceType], PublisherClient)
}

// SubjectsPublishedBy lists the NATS subjects of the types a publisher
// (a service name or PublisherClient) may publish, sorted, without
// duplicates.
func SubjectsPublishedBy(publisher string) []string {
	var out []string
	for _, k := range catalog {
		if slices.Contains(publishers[k.Type], publisher) && !slices.Contains(out, k.SubjectFilter()) {
			out = append(out, k.SubjectFilter())
		}
	}
	slices.Sort(out)
	return out
}

// SourceAllowed reports whether a CloudEvent of ceType may carry source.
// Requests may come from anyone; a fact must name one of its publishers
// (podvisor/<service>). The NATS permissions already stop a service from
// publishing another's facts; this check keeps a consumer from acting on a
// fact that reached the stream some other way (a replayed backup, a server
// without permissions) under another service's name.
func SourceAllowed(ceType, source string) bool {
	pubs := publishers[ceType]
	if slices.Contains(pubs, PublisherClient) {
		return true
	}
	svc, ok := strings.CutPrefix(source, SourcePrefix)
	return ok && slices.Contains(pubs, svc)
}

// OwnerSource is the CloudEvent source of ceType's first publisher
// (podvisor/<service>), or podvisor/client for a request: what a tool or a
// test that stands in for the owner sets so that consumers accept it.
func OwnerSource(ceType string) string {
	pubs := publishers[ceType]
	if len(pubs) == 0 {
		return SourcePrefix + PublisherClient
	}
	return SourcePrefix + pubs[0]
}
