// Package templates keeps the provisioner's pod VM templates and forks
// pod VMs from them (vSphere's InstantClone_Task, VMFork).
//
// # The hierarchy
//
// A template is a running pod VM of one shape: a host, a datastore, a
// size, the image chain disks of the pod's containers and the number of
// network cards (Shape). Its guest has booted, formatted and mounted its
// ephemeral disk, mounted the image disks and run the image's containers
// once (their overlay roots made, the image's pages cached), with no
// network configured. A pod VM of that shape is then an instant clone of
// the template: the child takes the template's hardware, a copy-on-write
// clone of its ephemeral disk, the very image disk files, its own
// guestinfo (the pod's spec, InstantCloneSpec.Config) and its cards moved
// to the pod's port groups with the pod's MACs (Location.DeviceChange).
//
// With simulated guests the child does not boot: the simulated datacenter
// keeps a standby of each instant-cloned VM (its agent started, its disks
// mounted) that the child's guest resumes with the child's own spec,
// identity, disk, cards and cgroup (shared/sim/standby.go), as a child
// resumes its parent's running guest on vSphere; only the pod's containers
// start.
//
// DESIGN's hierarchy has one more level, a parent per host (the booted
// agent before any image) from which each image's template is forked. It
// is not built, and the shape is the unit on purpose: InstantClone_Task
// cannot add the image disks a per-image child needs (its DeviceChange
// may only edit network cards), and what a pod's start saves — the
// prepared disk, the mounted images, the standby — is its own shape's
// template's; a per-host parent would only speed up building a new
// shape's template (docs/architecture.md, "Instant clones").
//
// # Records and replicas
//
// Templates are records in the KV bucket pod-templates, keyed by their
// deterministic name (pv-template-<hash of the shape and the agent>).
// The first replica to need one creates the record (KV Create: one
// winner) in state Building and builds the VM; a record stuck Building
// longer than BuildTimeout is taken over by CAS. Any number of replicas
// fork from a Ready record; each keeps the records a watch of the bucket
// delivers, so a fork from a template seen ready reads no record first. A host keeps at most Config.Warm templates:
// building one more removes the least recently used, so a new image (a
// new chain of disks) or a new agent (Config.Agent, part of the name)
// replaces the templates of the old one.
//
// # Before the network
//
// A pod VM may be forked before its pod's network is attached (the
// provisioner's forkearly.go): Fork with NICs that name no port group
// gives the child's cards their cables out, and the VM's network is
// attached later with podvm.Client.AttachNetwork. Such a fork is made only
// from a template ReadyFor says is ready (no read of the bucket), and never
// builds one: a template is built from a pod VM whose cards have their
// port groups.
//
// # Falling back
//
// Forking is an optimisation: whenever it is not possible the pod VM is
// created as before and the reason is returned (Outcome) for the pod's
// VMForked condition and the podvisor_provisioner_vm_starts_total
// counter: NoTemplate (the first pod of a shape starts the template's
// build), TemplateBuilding, TemplateFailed, EncryptionRequested (an
// encrypted ephemeral disk is keyed per VM and never cloned),
// InstantCloneFailed (the fault is in the message), OptedOut (the pod's
// annotation podvisor.io/instant-clone: "false").
package templates
