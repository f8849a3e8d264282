// Package provisioner is the podvisor service that owns pods: it admits
// them, keeps their records, and makes each one a pod VM in vCenter.
//
// # What it does
//
// Admission. pod.requested carries a Kubernetes v1 Pod. The manifest is
// validated by the events module (a bad one is answered with pod.rejected
// naming the field), normalized, and stored as an events.PodRecord in the
// KV bucket `pods` under <namespace>.<name> with a KV Create, so two
// requests for one name cannot both win. The same manifest again is a
// no-op; a different one under an existing name is rejected with
// AlreadyExists (pods are immutable). An admitted pod is announced with
// pod.accepted, which carries the pod VM size every service uses.
//
// The uid is metadata.uid when the manifest has one, else the request's
// uid, else derived from the pod key and the requesting event's id, so a
// redelivered request produces the same uid and the same VM name pv-<uid>.
//
// The PODS stream orders what was asked: a delete stored after a request
// outranks it, so the request delivered again once its pod's delete is done
// (its handler died or stalled past AckWait, it was retried, a durable
// replays the stream) admits nothing, while a request stored after the
// delete is a new pod. The delete request is the tombstone (bus.StoredAfter);
// a delete whose uid precondition names another pod does not count. Only a
// delivery that may be stale asks the stream, and only when it would create
// the pod: a fresh first delivery, nearly every request, goes straight to
// the KV Create (mayBeStale). The same order holds the other way: a delete
// applies only to a pod requested before it (the record's RequestID,
// "<event id>#<seq>", says where its request was stored), so a delete
// delivered again after its pod was deleted and a pod of that name
// requested anew leaves the new pod alone, uid or no uid in the delete.
// The host agent's stop on delete follows the same rule.
//
// Within one process the consumer's keyed queue hands a pod's events to
// the handlers in stream order; across replicas pulling the one durable it
// cannot: a delete can reach one replica while another is still admitting
// the request stored just before it, its record not made yet. A delete
// that finds no record therefore asks the durable's ack floor (one round
// trip, on that path only). While an event stored before it is unsettled
// (maybe that request) it comes back after a second (bus.InProgress) and
// looks again, three times at most; once the floor has passed it, it reads
// the record again, since a request makes its record before it is
// acknowledged. Only then is it rejected with NotFound: a name never
// requested is refused within seconds however busy the stream, and a
// delete published right after its request (by a raw client, which has
// read no record) deletes the pod instead of being refused.
//
// Facts. The scheduler (pod.scheduled / pod.unschedulable), the image cache
// (pod.images.ready / failed), network-config (pod.network.attached /
// failed) and the migration service (pod.evicted, migration.*) report what
// they did; each fact is folded into the record by compare-and-set and the
// pod is then reconciled. Reconciling is level-triggered: whatever the
// event, the provisioner compares the record with vCenter and does what is
// missing. Facts about a pod that no longer exists, or about an earlier pod
// of the same name (another uid), are ignored. pod.images.retrying (the
// image cache tries a pod's images again) is news, not a fact: while the pod
// waits for its images its reason and message say ImagePullBackOff and why,
// until pod.images.ready or pod.images.failed replaces them; it moves no
// phase and reconciles nothing. While a pod is on its way to
// a VM, a fact is folded into the record as this process last wrote it,
// without reading it first: the compare-and-set at that revision fails if
// anyone wrote since, and the fact is then folded into a fresh read. The
// created VM's reference is saved with the power-on (one write), after
// pod.vm.ready: until then the recorded create task leads a retry to it.
//
// Pod VMs. Once a pod has a host, an image disk chain per container and
// every network attached on that host, the provisioner creates the VM in
// folder podvisor/<namespace> (or podvisor/<namespace>/shard-N, see
// Config.FolderShards), in the host's cluster pool, on the host, sized by
// events.SizePodVM, with a NIC per network on its port group, disk 0 a thin
// ephemeral disk and every image chain disk of the pod's containers attached
// read-only, each once (package podvm builds it). guestinfo.podvisor.spec
// tells the pod VM agent what to run (see guestinfo.go). Then it powers the
// VM on and announces pod.vm.ready: the pod is Starting (Kubernetes phase
// Pending, reason ContainerCreating) — powered on is not running.
//
// # Status from the guest
//
// The host agent publishes pod.containers.reported with what the pod VM
// agent says runs. The provisioner folds each report into the record:
// containerStatuses and initContainerStatuses as reported, conditions
// Initialized, ContainersReady and Ready; a Starting pod becomes Running,
// announcing pod.running, once every container has started; a pod whose
// containers all terminated for good (restartPolicy Never, or OnFailure with
// exit 0) becomes Succeeded or Failed and keeps its VM until deleted. Stale
// reports are ignored: from a VM that is not the pod's current one, or of
// the same boot with a Seq not above the last folded one.
//
// A report of a new boot adds what the containers did in earlier ones
// (containersBefore: restarts, last states). A pod VM made after a boot
// (the pod placed again when its host was lost, or its VM re-created)
// gets in its guest spec every container that terminated for good by
// the last folded statuses (Container.Completed, with its terminated
// state): the kubelet does not run such a container again when it
// re-creates a pod's sandbox, and a batch step must not do its work
// twice. A pod VM powered on again in place (found off, or power-cycled
// by drift repair) keeps the spec it was made with: before the power-on
// its spec is rewritten with the marks it lacks (markCompleted; nothing
// is written when none is missing). The guest reports such a container
// with that very state and no restart of its own, which folds to the
// status it had: no restart counted, its last state kept. Init containers
// run again in every boot.
//
// # Nothing twice, nothing lost
//
// Before creating, the VM is looked up: by the reference in the record, by
// the CreateVM task reference in the record (written before the provisioner
// waits on the task), and by name. A process that dies anywhere between
// CreateVM and the ack therefore finds its VM after restart instead of
// creating a second one. Events the provisioner derives from a record
// (pod.vm.ready, pod.running, pod.failed, pod.deleted) get ids fixed per pod and
// placement, and are published before the record says so: a crash in
// between republishes the same id, which JetStream stores once.
//
// # Failures
//
// vSphere faults that can pass (busy resources, lost connections, timeouts;
// podvm.IsTransient) are retried with the consumer's backoff; anything else
// (invalid spec, missing port group or parent disk, no permission) is
// bus.Permanent. When a step is given up — at once, or when the deliveries
// run out — the routes' failure hook (gaveUp) fails the pod: its VM is
// removed, pod.failed names the step and the vSphere fault, and the owners
// release what they held for it. A Failed pod stays visible until it is
// deleted. Failures that are not a vSphere step's (the bus, the KV store)
// fail no pod: they are retried and dead-lettered, and drift repair drives
// the pod on.
//
// Deletion (pod.delete.requested) first gives the containers their grace
// period: a powered-on VM stays on until the guest reports every container
// terminated, or at most terminationGracePeriodSeconds + GuestStopSlack
// (stopwait.go). The guest's report finishes the delete as soon as it
// shows them stopped; the delete request itself comes back at the bound
// (bus.InProgress: its redelivery is the bound's timer, which no process
// has to remember), and finding its pod deleted (the record removed
// after the delete was stored: the key's delete marker says when; with a
// pod of that name requested since, the pod.deleted stored after it), it
// is acknowledged and does nothing more. It then powers off and destroys the
// VM — waiting for a create still in flight — confirms it is gone,
// announces pod.deleted with the host, image digests and addresses to
// release, and removes the record. An unknown pod is rejected with
// NotFound, once nothing stored before the delete may still make it (see
// the ordering above).
//
// Eviction (pod.evicted) returns the pod to Pending for a new placement and
// removes the old VM if vCenter lets it; if the old host is unreachable the
// VM is remembered as stale and the next VM is named pv-<uid>-<n>, because
// two VMs never share a name.
//
// # Drift repair
//
// At start and every Config.ResyncInterval, Resync compares all records with the pod VMs
// below the podvisor folder: orphan VMs (no record), stale VMs of earlier
// placements and VMs a Failed pod still has are destroyed, pods with a VM
// (Starting, Running, Succeeded) whose VM is gone are provisioned again,
// their powered-off VMs are powered on, and pods stuck half-way are driven
// on. A pass marks every pod whose VM is gone (Provisioning, VMMissing)
// before it makes any VM again, so that no pod goes on claiming Running
// while the VMs of the pods before it are made. A Starting pod whose guest never reported within Config.GuestTimeout
// is reported (VMReady False, reason GuestSilent), then power-cycled, up to
// Config.GuestRepairs times, then its VM is created again.
// Every repair is logged and counted in podvisor_provisioner_repairs_total
// {kind}. While a pod record does not decode, no orphan VM is destroyed (it
// may be that record's pod's): the pass says so, naming the record, and
// does every other repair. An orphan that is gone by the time its repair
// comes (its pod's delete removed it) is not counted.
//
// # Encrypted ephemeral disks
//
// A pod annotated podvisor.io/ephemeral-encryption: required gets a disk
// key kept sealed in its record (package diskkeys; the key-encryption key
// comes from Config.KeyFile) and a fresh nonce in its VM's spec at every
// create. The service answers pv.keys.release (asked by host agents for
// their guests): the key, wrapped for the guest's public key, goes only to
// a request naming the pod's host, the recorded VM's instance uuid as
// vCenter reports it and the nonce of its create (diskkey.go).
//
// # Running it
//
//	cfg, err := provisioner.ConfigFromEnv()
//	svc, err := provisioner.New(cfg, provisioner.Deps{Bus: b, VSphere: session, Logger: log})
//	err = svc.Run(ctx) // blocks; nil when ctx ends
package provisioner
