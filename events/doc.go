// Package events is the contract between podvisor's services: the catalog
// of CloudEvents they exchange over NATS JetStream, the Go struct of every
// payload, and the rules every service must apply identically — pod
// validation, pod VM sizing, the pod's networks. It has no transport:
// shared/bus publishes and consumes what is defined here, and a client in
// another language needs only the catalog and the JSON samples.
//
// # The catalog
//
// Every event has three names, all constants here:
//
//	CloudEvent type   io.podvisor.pod.images.ready.v1   TypePodImagesReady
//	NATS subject      pv.pod.images.ready               SubjectPodImagesReady
//	JetStream stream  PODS (captures pv.pod.>)          StreamPods
//
// and one payload struct named after it (PodImagesReady). Kinds lists the
// whole catalog; Lookup finds a type's subject, stream and payload
// constructor; Decode turns CloudEvent data into the payload. The streams
// are PODS, IMAGES, NETWORKS, MIGRATIONS and HOSTS, one per domain, so a
// service consumes a domain with one durable consumer and filters subjects.
//
// Each payload implements Payload: Validate, and ObjectKey, the key of the
// object the event is about — <namespace>/<name> for pod and migration
// events (PodKey), the host name for host events, the network name for
// network events, the digest or chainID for image events. Producers use it
// as the CloudEvent subject attribute, and consumers' keyed work queues use
// the subject to run one reconcile per object at a time. Migration events are
// keyed by pod, not by migration ID, because a pod migrates once at a time.
//
// # Versioning
//
// The version is the last element of the CloudEvent type and never part of
// the NATS subject. Adding an optional field is compatible and stays .v1
// (old consumers must then be updated before producers fill it, since
// decoding is strict). Any other change — renaming or removing a field,
// changing its meaning or type, making it required — adds a new type such as
// io.podvisor.pod.accepted.v2 with its own struct (PodAcceptedV2) beside the
// .v1 one, on the same subject. Producers publish both until every consumer
// understands .v2, then stop publishing .v1; a consumer skips types it does
// not know. Samples for both live in testdata/.
//
// # Decoding and validation
//
// Decode is strict in the way the Kubernetes API server is: field names are
// case-sensitive and unknown or duplicate fields are errors, also inside an
// embedded Pod, because a misspelt field silently dropped is a
// misconfiguration nobody sees. Data over MaxEventSize (64 KiB) is refused.
// After decoding, the payload is validated. Problems come back as a
// *ValidationError listing every field with its reason, one per "; ":
//
//	pod.spec.containers[1].resources.requests.memory: Invalid value: "12Gx": invalid quantity: ...
//
// ValidationError.Field is the first offending field, which the provisioner
// copies into PodRejected.Field. Syntax and JSON type errors are a
// *DecodeError.
//
// # Pods
//
// Pods are Kubernetes v1 Pod manifests (k8s.io/api/core/v1), accepted as
// written and checked by ValidatePod. podvisor supports what a pod VM can
// honour: containers and init containers with name, image, command, args,
// workingDir, ports, env values, CPU and memory requests and limits,
// imagePullPolicy, volumeMounts and a few securityContext settings
// (runAsUser, runAsGroup, runAsNonRoot, readOnlyRootFilesystem); liveness,
// readiness and startup probes (exec, httpGet and tcpSocket on a port
// number) on containers; emptyDir volumes (a directory of the pod VM's
// ephemeral disk, or a tmpfs with medium Memory); the pod's restartPolicy,
// terminationGracePeriodSeconds and nodeSelector (matched against host
// labels). Fields Kubernetes itself writes into exported manifests are
// accepted at their default values (dnsPolicy ClusterFirst, schedulerName
// default-scheduler, serviceAccountName default, terminationMessagePath).
// Everything else — other volume types, env valueFrom, ephemeral containers,
// sidecar (restartPolicy) init containers, grpc probes, host namespaces,
// hostPort, privileged, nodeName, affinity, tolerations, ... — is
// refused with a reason, never silently dropped. The list of supported
// fields is an allow-list, so a field added by a newer k8s.io/api is refused
// until someone decides what a pod VM does with it.
//
// NormalizePod prepares a pod for storage and comparison (default namespace,
// apiVersion/kind, no status or server-side metadata). Pods are immutable: a
// second request with the same normalized pod is a no-op, a different one is
// rejected.
//
// The annotation podvisor.io/networks lists the pod's logical networks, in
// NIC order ("frontend, backend": trimmed, DNS-1123 labels, no duplicates,
// at most MaxPodNetworks); without it the pod joins DefaultNetwork.
// PodNetworks returns the list. Any other podvisor.io/ annotation is an
// error, so a typo cannot pass for a feature.
//
// # Sizing
//
// SizePodVM is the one sizing function, used by the provisioner at
// admission (PodAccepted.Size carries the result to everyone else), so the
// scheduler reserves exactly what the provisioner creates:
//
//   - each container counts its request; a container with only a limit
//     counts the limit, as Kubernetes defaults the request to it; a
//     container with neither counts DefaultContainerCPUMilli (100m) and
//     DefaultContainerMemoryBytes (128Mi), because a pod VM cannot run on
//     nothing (ContainerRequests shows the per-container figures);
//   - the pod VM overhead (PodVMOverheadCPUMilli 250m,
//     PodVMOverheadMemoryBytes 128Mi: guest kernel and agent) is added once;
//   - VCPUs = ceil(CPUMilli/1000), at least 1; MemoryMiB is the memory
//     rounded up to whole MiB and then to a multiple of 4, which vSphere
//     requires.
//
// For example, containers requesting 500m/256Mi and 1/512Mi give 1750m and
// 896Mi: a 2 vCPU, 896 MiB pod VM. Init containers are refused rather than
// sized, since pod VMs run app containers only.
//
// # Objects for apply -f
//
// DecodeObjects reads a multi-document YAML stream of v1 Pods and
// podvisor.io/v1alpha1 Networks and Migrations, strictly, validating each
// and naming the document and the field in every error (see Network and
// Migration for the object formats).
//
// # Samples
//
// testdata/<ce-type>.json holds a realistic payload of every event type.
// A test decodes every sample through Decode and fails when a catalog type
// has no sample or a sample names no catalog type; the samples are also the
// quickest way to learn the payloads:
//
//	nats pub pv.host.drain.requested "$(cat testdata/io.podvisor.host.drain.requested.v1.json)" \
//	  -H ce-specversion:1.0 -H ce-type:io.podvisor.host.drain.requested.v1 \
//	  -H ce-source:cli -H ce-id:$(uuidgen) -H ce-subject:DC0_C0_H3
package events
