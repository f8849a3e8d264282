package templates

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/shared/record"
	"github.com/vmware/govmomi/vim25/types"
	corev1 "k8s.io/api/core/v1"
)

// Namespace is the guestinfo namespace of template VMs: no pod has it.
const Namespace = "podvisor-templates"

// States of a template record.
const (
	StateBuilding = "Building"
	StateReady    = "Ready"
	StateFailed   = "Failed"
)

// Reasons a pod VM was created rather than forked (Outcome.Reason), and
// the one it was forked.
const (
	ReasonForked = "InstantClone"
	// ReasonForkedEarly: forked as soon as the pod was placed, before its
	// network was attached (Keeper.ReadyFor); the pod's network is then
	// attached to the running VM (podvm.Client.AttachNetwork).
	ReasonForkedEarly         = "InstantCloneBeforeNetwork"
	ReasonNoTemplate          = "NoTemplate"
	ReasonTemplateBuilding    = "TemplateBuilding"
	ReasonTemplateStarting    = "TemplateStarting"
	ReasonTemplateFailed      = "TemplateFailed"
	ReasonEncryptionRequested = "EncryptionRequested"
	ReasonInstantCloneFailed  = "InstantCloneFailed"
	ReasonOptedOut            = "OptedOut"
)

// Config says whether and how pod VMs are forked.
type Config struct {
	// Warm is how many templates a host keeps; 0 turns forking off.
	Warm int
	// Folder is the VM folder (below the datacenter's) of the templates:
	// outside the pods' folder, so drift repair never takes them for
	// orphan pod VMs.
	Folder string
	// Agent identifies the pod VM agent build; it is part of a template's
	// name, so a new agent gets new templates and the old ones go.
	Agent string
	// AwaitGuest makes a template usable only once its guest has reported
	// its containers started (Observe): what a datacenter with guests
	// needs, since a fork copies the template's disk as it is at that
	// instant. Off, a powered-on template is usable at once.
	AwaitGuest bool
	// BuildTimeout is how long a template may stay Building before
	// another replica takes its build over, and how long a Failed one is
	// kept before it is tried again.
	BuildTimeout time.Duration
	// ChannelKey makes channel tokens where pod VMs reach their host agents
	// through network serial ports (the provisioner's ChannelURI); nil
	// otherwise. A template greets the concentrator as itself, so its spec
	// carries the token of its own identity, not its first pod's.
	ChannelKey []byte
}

// Shape is what a template shares with every pod VM forked from it.
type Shape struct {
	Host             string   `json:"host"`
	Pool             string   `json:"pool,omitempty"`
	Datastore        string   `json:"datastore"`
	VCPUs            int32    `json:"vcpus"`
	MemoryMiB        int64    `json:"memoryMiB"`
	EphemeralDiskMiB int64    `json:"ephemeralDiskMiB"`
	GuestID          string   `json:"guestID"`
	ImageDisks       []string `json:"imageDisks"`
	NICs             int      `json:"nics"`
	// BootDisk is the boot image's disk (podvm.Spec.BootDisk): a new boot
	// image, which carries a new agent, makes new templates. Left out of
	// the name's hash when empty, so templates without one keep theirs.
	BootDisk string `json:"bootDisk,omitempty"`
	// Channel is the network serial port of the channel
	// (podvm.Spec.ChannelURI): a child has its template's hardware, so a
	// template without the port would give pods whose guestinfo names one
	// a channel that goes nowhere. Left out of the name's hash when empty.
	Channel string `json:"channel,omitempty"`
}

// Record is one template in KV.
type Record struct {
	Name  string `json:"name"`
	Shape Shape  `json:"shape"`
	Agent string `json:"agent"`
	State string `json:"state"`
	// VMRef is the template VM once created.
	VMRef string `json:"vmRef,omitempty"`
	// GuestReady says the template's guest reported its containers
	// started: its disks are prepared.
	GuestReady bool `json:"guestReady,omitempty"`
	// Reason says why a build failed.
	Reason    string    `json:"reason,omitempty"`
	Builder   string    `json:"builder"`
	UpdatedAt time.Time `json:"updatedAt"`
	LastUsed  time.Time `json:"lastUsed"`
}

// Outcome says how a pod VM was started.
type Outcome struct {
	Forked   bool
	Template string
	Reason   string
	Message  string
	// ReadTemplate says this fork read the template VM: the first fork of
	// a version of the template's record, or the first after a failed one.
	ReadTemplate bool
	// ReadRecord says a fork (Forked, or InstantCloneFailed) read the
	// template's record from the bucket: the watch had not delivered it
	// ready yet.
	ReadRecord bool
}

// Keeper forks pod VMs from templates and keeps the templates.
type Keeper struct {
	cfg   Config
	vms   *podvm.Client
	store *record.Store[Record]
	log   *slog.Logger
	id    string
	now   func() time.Time
	// ctx bounds the background builds; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	building map[string]bool
	// read holds what a fork reads of each template VM, by template
	// name, for the version of the record it was read for (readTemplate).
	read map[string]readTemplate
	// seen holds the records as a watch of the bucket last delivered them
	// (watch): a fork takes a ready template's record from it rather than
	// reading the bucket, and reads only when it has none that is ready.
	seen map[string]Record
	wg   sync.WaitGroup
}

// readTemplate is a template VM as read for one version of its record.
type readTemplate struct {
	version string
	vm      *podvm.Template
}

// version identifies what a record says of its VM: another VM, or the same
// record rebuilt, is another version.
func (r *Record) version() string {
	return r.VMRef + "@" + r.UpdatedAt.UTC().Format(time.RFC3339Nano)
}

// New returns a keeper over the pod-templates bucket; id names this
// replica in the records it writes.
func New(cfg Config, kv jetstream.KeyValue, vms *podvm.Client, id string, log *slog.Logger) *Keeper {
	if cfg.Folder == "" {
		cfg.Folder = "podvisor-templates"
	}
	if cfg.BuildTimeout <= 0 {
		cfg.BuildTimeout = 2 * time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &Keeper{cfg: cfg, vms: vms, store: record.New[Record](kv, "pod template"), log: log.With("part", "templates"),
		id: id, now: time.Now, ctx: ctx, cancel: cancel, building: map[string]bool{}, read: map[string]readTemplate{},
		seen: map[string]Record{}}
	k.watch()
	return k
}

// watch keeps seen up to date from a watch of the bucket until Close. A
// keeper whose watch cannot start reads the bucket on every fork.
func (k *Keeper) watch() {
	changes, err := k.store.Watch(k.ctx, ">", func(err error) { k.log.Warn("template record", "err", err) })
	if err != nil {
		k.log.Warn("templates: no watch of the records; every fork reads its template's", "err", err)
		return
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for c := range changes {
			k.mu.Lock()
			if c.Value == nil {
				delete(k.seen, c.Key)
			} else {
				k.seen[c.Key] = *c.Value
			}
			k.mu.Unlock()
		}
	}()
}

// record returns the template record a fork goes by: the one the watch
// delivered when it is ready to fork from (the fork needs no read), else
// the bucket's. A record seen ready that has since gone or changed makes
// at worst one fork fail and fall back to a create, as any template that
// goes away under a fork does.
func (k *Keeper) record(ctx context.Context, name string) (_ *Record, cached bool, _ error) {
	k.mu.Lock()
	r, ok := k.seen[name]
	k.mu.Unlock()
	if ok && r.State == StateReady && r.VMRef != "" && (r.GuestReady || !k.cfg.AwaitGuest) {
		return &r, true, nil
	}
	rec, _, err := k.store.Get(ctx, name)
	return rec, false, err
}

// ReadyFor says whether a pod VM s placed by p would be forked now from a
// template a watch of the bucket delivered ready, without reading the
// bucket or vCenter: what decides forking a pod VM before its network is
// attached (a pod whose shape has no ready template is created later, as
// before).
func (k *Keeper) ReadyFor(s podvm.Spec, p podvm.Placement) bool {
	name := Name(ShapeOf(s, p), k.cfg.Agent)
	k.mu.Lock()
	r, ok := k.seen[name]
	k.mu.Unlock()
	return ok && r.State == StateReady && r.VMRef != "" && (r.GuestReady || !k.cfg.AwaitGuest)
}

// Close stops the builds in flight and waits for them.
func (k *Keeper) Close() {
	if k == nil {
		return
	}
	k.cancel()
	k.wg.Wait()
}

// ShapeOf is the shape of a pod VM.
func ShapeOf(s podvm.Spec, p podvm.Placement) Shape {
	return Shape{Host: p.Host, Pool: p.Pool, Datastore: p.Datastore, VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB,
		EphemeralDiskMiB: s.EphemeralDiskMiB, GuestID: s.GuestID, ImageDisks: slices.Clone(s.ImageDisks), NICs: len(s.NICs),
		BootDisk: s.BootDisk, Channel: s.ChannelURI}
}

// Name is the template's deterministic name: every replica derives the
// same one for a shape and agent.
func Name(sh Shape, agent string) string {
	b, _ := json.Marshal(struct {
		Shape Shape  `json:"shape"`
		Agent string `json:"agent"`
	}{sh, agent})
	sum := sha256.Sum256(b)
	return "pv-template-" + hex.EncodeToString(sum[:8])
}

// Fork starts the pod VM s from its shape's template and waits for the
// instant clone, returning the VM (powered on) and Forked. When it cannot
// fork it returns no VM, no error and the reason; the caller creates the
// VM. A pod VM of a shape without a template starts its build.
func (k *Keeper) Fork(ctx context.Context, s podvm.Spec, p podvm.Placement, pod *corev1.Pod) (*podvm.VM, Outcome) {
	if pod.Annotations[events.AnnotationInstantClone] == "false" {
		return nil, Outcome{Reason: ReasonOptedOut, Message: "the pod asks not to be forked (" + events.AnnotationInstantClone + ": \"false\")"}
	}
	if events.PodEphemeralEncryption(pod) {
		return nil, Outcome{Reason: ReasonEncryptionRequested, Message: "an encrypted ephemeral disk is keyed per VM and never cloned from a template"}
	}
	sh := ShapeOf(s, p)
	name := Name(sh, k.cfg.Agent)
	rec, cached, err := k.record(ctx, name)
	if err != nil {
		return nil, Outcome{Template: name, Reason: ReasonNoTemplate, Message: err.Error(), ReadRecord: true}
	}
	// A template is built from a pod VM whose cards are on their port
	// groups; a fork made before the pod's network is attached has none
	// and builds nothing.
	buildable := !slices.ContainsFunc(s.NICs, func(n podvm.NIC) bool { return n.PortGroup == "" })
	build := func() {
		if buildable {
			k.build(name, sh, s)
		}
	}
	switch {
	case rec == nil:
		build()
		return nil, Outcome{Template: name, Reason: ReasonNoTemplate, Message: "template " + name + " is being built for this shape; pod VMs of it are forked once it is ready"}
	case rec.State == StateBuilding:
		if k.now().Sub(rec.UpdatedAt) > k.cfg.BuildTimeout {
			build()
		}
		return nil, Outcome{Template: name, Reason: ReasonTemplateBuilding, Message: "template " + name + " is still being built"}
	case rec.State == StateFailed:
		if k.now().Sub(rec.UpdatedAt) > k.cfg.BuildTimeout {
			build()
		}
		return nil, Outcome{Template: name, Reason: ReasonTemplateFailed, Message: "template " + name + ": " + rec.Reason}
	case k.cfg.AwaitGuest && !rec.GuestReady:
		return nil, Outcome{Template: name, Reason: ReasonTemplateStarting, Message: "template " + name + " is built; its guest has not reported its containers started yet"}
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: rec.VMRef}
	var vmRef types.ManagedObjectReference
	tmpl, read, err := k.template(ctx, name, rec)
	if err == nil {
		var task types.ManagedObjectReference
		if task, err = k.vms.StartInstantClone(ctx, tmpl, s, p); err == nil {
			vmRef, err = k.vms.WaitCreate(ctx, task)
		}
	}
	if err != nil {
		// What was read of the template is read again by the next fork:
		// the template may have changed under it.
		k.forgetRead(name)
		if errors.Is(err, errTemplateGone) || errors.Is(k.isTemplateVM(ctx, ref, name), errTemplateGone) {
			// The template VM is gone (removed by a person, a restarted
			// simulator): its record goes, and the next pod rebuilds it.
			k.forget(ctx, name, rec.version())
		}
		return nil, Outcome{Template: name, Reason: ReasonInstantCloneFailed, Message: fmt.Sprintf("instant clone of %s: %v", name, err), ReadTemplate: read, ReadRecord: !cached}
	}
	k.touch(ctx, name, rec)
	return &podvm.VM{Ref: vmRef, Name: s.Name, Host: p.Host, PowerState: types.VirtualMachinePowerStatePoweredOn},
		Outcome{Forked: true, Template: name, Reason: ReasonForked, Message: "pod VM " + s.Name + " is an instant clone of template " + name, ReadTemplate: read, ReadRecord: !cached}
}

// template returns what forks read of the template VM rec names, read
// once per version of the record; read says it was read now.
func (k *Keeper) template(ctx context.Context, name string, rec *Record) (_ *podvm.Template, read bool, _ error) {
	v := rec.version()
	k.mu.Lock()
	t, ok := k.read[name]
	k.mu.Unlock()
	if ok && t.version == v {
		return t.vm, false, nil
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: rec.VMRef}
	if err := k.isTemplateVM(ctx, ref, name); err != nil {
		return nil, true, err
	}
	vm, err := k.vms.ReadTemplate(ctx, ref)
	if err != nil {
		return nil, true, err
	}
	k.mu.Lock()
	k.read[name] = readTemplate{version: v, vm: vm}
	k.mu.Unlock()
	return vm, true, nil
}

// errTemplateGone: the template's VM is not in vCenter any more.
var errTemplateGone = errors.New("the template VM is gone")

// isTemplateVM checks that ref is still the template VM name: a vCenter
// rebuilt from nothing (the simulated datacenter of a restarted `up`)
// numbers its VMs from the start again, and the reference a template
// record kept may name another pod's running VM since, which a fork would
// clone, memory and disks.
func (k *Keeper) isTemplateVM(ctx context.Context, ref types.ManagedObjectReference, name string) error {
	vm, err := k.vms.Get(ctx, ref)
	switch {
	case err != nil:
		return err
	case vm == nil:
		return errTemplateGone
	case vm.Name != name:
		return fmt.Errorf("%w: %s is VM %s now", errTemplateGone, ref.Value, vm.Name)
	}
	return nil
}

// forgetRead drops what was read of a template.
func (k *Keeper) forgetRead(name string) {
	k.mu.Lock()
	delete(k.read, name)
	k.mu.Unlock()
}

// touch marks the template used, at most every few seconds (a write per
// fork would cost the hot path a KV round trip).
func (k *Keeper) touch(ctx context.Context, name string, rec *Record) {
	if k.now().Sub(rec.LastUsed) < 10*time.Second {
		return
	}
	_, err := k.store.Mutate(ctx, name, func(r *Record) error {
		r.LastUsed = k.now().UTC()
		return nil
	})
	if err != nil {
		k.log.Info("template use not recorded", "template", name, "err", err)
	}
}

// forget removes a template's record whose VM is gone, unless the record
// is another version by now (built again by another replica: a vCenter
// rebuilt from nothing may even give its VM the same reference).
func (k *Keeper) forget(ctx context.Context, name, version string) {
	k.forgetRead(name)
	if _, err := k.store.DeleteIf(ctx, name, func(r *Record) bool { return r.version() == version }); err != nil {
		k.log.Warn("forget template", "template", name, "err", err)
	}
}

// build builds the template in the background, once per process at a
// time; the record decides between replicas.
func (k *Keeper) build(name string, sh Shape, s podvm.Spec) {
	k.mu.Lock()
	if k.building[name] {
		k.mu.Unlock()
		return
	}
	k.building[name] = true
	k.mu.Unlock()
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer func() {
			k.mu.Lock()
			delete(k.building, name)
			k.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(k.ctx, k.cfg.BuildTimeout)
		defer cancel()
		if err := k.buildOnce(ctx, name, sh, s); err != nil {
			k.log.Warn("template not built", "template", name, "host", sh.Host, "err", err)
		}
	}()
}

// errTaken: another replica builds the template.
var errTaken = errors.New("another replica builds it")

func (k *Keeper) buildOnce(ctx context.Context, name string, sh Shape, s podvm.Spec) error {
	now := k.now().UTC()
	// Claim the build: create the record, or take over one that stayed
	// Building (or Failed) too long, by CAS on its revision.
	_, err := k.store.Upsert(ctx, name, func(r *Record, exists bool) error {
		if exists && (r.State == StateReady || k.now().Sub(r.UpdatedAt) <= k.cfg.BuildTimeout) {
			return errTaken
		}
		*r = Record{Name: name, Shape: sh, Agent: k.cfg.Agent, State: StateBuilding, Builder: k.id, UpdatedAt: now, LastUsed: now, VMRef: r.VMRef}
		return nil
	})
	if errors.Is(err, errTaken) {
		return nil
	}
	if err != nil {
		return err
	}
	ref, err := k.makeVM(ctx, name, sh, s)
	_, serr := k.store.Mutate(ctx, name, func(r *Record) error {
		if r.Builder != k.id {
			return errTaken // taken over meanwhile: the other build records
		}
		r.UpdatedAt = k.now().UTC()
		if err != nil {
			r.State, r.Reason = StateFailed, err.Error()
			return nil
		}
		r.State, r.VMRef, r.Reason = StateReady, ref.Value, ""
		return nil
	})
	if err != nil {
		return err
	}
	if serr != nil && !errors.Is(serr, errTaken) {
		return serr
	}
	k.log.Info("template ready", "template", name, "vm", ref.Value, "host", sh.Host, "images", len(sh.ImageDisks))
	return k.evict(ctx, name, sh.Host)
}

// makeVM creates and powers on the template VM (or finds the one an
// earlier attempt made).
func (k *Keeper) makeVM(ctx context.Context, name string, sh Shape, s podvm.Spec) (types.ManagedObjectReference, error) {
	var none types.ManagedObjectReference
	vm, err := k.vms.Find(ctx, name)
	if err != nil {
		return none, err
	}
	if vm != nil && vm.PowerState == types.VirtualMachinePowerStatePoweredOn {
		return vm.Ref, nil
	}
	if vm != nil {
		// Half made by an attempt that did not finish: start again.
		if err := k.vms.Destroy(ctx, vm.Ref); err != nil {
			return none, err
		}
	}
	spec, err := templateSpec(name, s, k.cfg.ChannelKey)
	if err != nil {
		return none, err
	}
	task, err := k.vms.StartCreate(ctx, spec, podvm.Placement{Host: sh.Host, Pool: sh.Pool, Folder: k.cfg.Folder, Datastore: sh.Datastore, RemoveLeftovers: true})
	if err != nil {
		return none, fmt.Errorf("create template VM: %w", err)
	}
	ref, err := k.vms.WaitCreate(ctx, task)
	if err != nil {
		return none, fmt.Errorf("create template VM: %w", err)
	}
	k.vms.CreateDone(spec.Name)
	if err := k.vms.PowerOn(ctx, ref); err != nil {
		return none, fmt.Errorf("power on template VM: %w", err)
	}
	return ref, nil
}

// templateSpec is the template VM of a pod VM's shape: the same hardware,
// cards on the same port groups with generated MACs, and a guest spec
// that runs the pod's containers once, with no network configured (the
// template never talks to a pod network; its children do, each with its
// own address from its own spec). The spec says it is a template's, so an
// agent that can read its configuration again watches it for a child's.
func templateSpec(name string, s podvm.Spec, channelKey []byte) (podvm.Spec, error) {
	t := s
	t.Name = name
	t.NICs = nil
	for _, n := range s.NICs {
		t.NICs = append(t.NICs, podvm.NIC{Network: n.Network, PortGroup: n.PortGroup})
	}
	pod, err := guestchannel.UnmarshalSpec([]byte(s.ExtraConfig[guestchannel.GuestinfoSpec]))
	if err != nil {
		return t, fmt.Errorf("template %s: the pod's guest spec: %w", name, err)
	}
	pod.UID, pod.Namespace, pod.Name, pod.Hostname = name, Namespace, name, name
	pod.Template = true
	if pod.ChannelToken != "" {
		// The concentrator checks a hello's token against the identity it
		// names: the template's, since it greets as itself.
		pod.ChannelToken = guestchannel.ChannelToken(channelKey, name, Namespace, name)
	}
	pod.NICs, pod.DNS, pod.Encryption, pod.InitContainers = nil, nil, nil, nil
	pod.RestartPolicy = "Never"
	pod.TerminationGracePeriodSeconds = 1
	for i := range pod.Containers {
		// Names of their own: what the template writes under a
		// container's name (its logs) never shows in a child's.
		pod.Containers[i].Name = fmt.Sprintf("template-%d", i)
		pod.Containers[i].LivenessProbe, pod.Containers[i].ReadinessProbe, pod.Containers[i].StartupProbe = nil, nil, nil
		// A template runs every container (a pod VM made after a boot of
		// its pod marks the ones that completed there: not for a fork).
		pod.Containers[i].Completed = nil
	}
	for i, d := range pod.Disks {
		if d.Role == guestchannel.DiskEphemeral {
			pod.Disks[i].Path = podvm.EphemeralDiskPath(strings.Trim(strings.SplitN(d.Path, "]", 2)[0], "["), name)
		}
	}
	spec, err := guestchannel.MarshalSpec(pod)
	if err != nil {
		return t, fmt.Errorf("template %s: %w", name, err)
	}
	t.ExtraConfig = map[string]string{}
	for k, v := range s.ExtraConfig {
		t.ExtraConfig[k] = v
	}
	t.ExtraConfig[podvm.UIDKey], t.ExtraConfig[podvm.NamespaceKey], t.ExtraConfig[podvm.PodKey] = name, Namespace, name
	t.ExtraConfig[guestchannel.GuestinfoSpec] = spec
	return t, nil
}

// evict removes the least recently used templates of the host beyond
// Config.Warm, and those of another agent, keeping the one just built.
func (k *Keeper) evict(ctx context.Context, keep, host string) error {
	recs, err := k.store.List(ctx)
	if err != nil {
		return err
	}
	var onHost []Record
	for _, r := range recs {
		if r.Shape.Host == host && r.Name != keep && r.State != StateBuilding {
			onHost = append(onHost, r)
		}
	}
	sort.Slice(onHost, func(i, j int) bool { return onHost[i].LastUsed.After(onHost[j].LastUsed) })
	kept := 1 // the new one
	var errs []error
	for _, r := range onHost {
		if r.Agent == k.cfg.Agent && r.State == StateReady && kept < k.cfg.Warm {
			kept++
			continue
		}
		errs = append(errs, k.remove(ctx, r))
	}
	return errors.Join(errs...)
}

// remove destroys a template VM and deletes its record. Pod VMs forked
// from it keep running: their disks are their own clones, the image disks
// are the image cache's.
func (k *Keeper) remove(ctx context.Context, r Record) error {
	if r.VMRef != "" {
		ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: r.VMRef}
		switch err := k.isTemplateVM(ctx, ref, r.Name); {
		case errors.Is(err, errTemplateGone):
			// Gone, or the reference names another VM now: nothing of the
			// template's to destroy.
		case err != nil:
			return fmt.Errorf("remove template %s: %w", r.Name, err)
		default:
			if err := k.vms.Destroy(ctx, ref); err != nil {
				return fmt.Errorf("remove template %s: %w", r.Name, err)
			}
		}
	}
	k.forgetRead(r.Name)
	k.log.Info("template removed", "template", r.Name, "host", r.Shape.Host, "agent", r.Agent)
	// Unless it is another version by now (built again meanwhile).
	_, err := k.store.DeleteIf(ctx, r.Name, func(cur *Record) bool { return cur.version() == r.version() })
	return err
}

// List returns every template record.
func (k *Keeper) List(ctx context.Context) ([]Record, error) { return k.store.List(ctx) }

// Observe takes a template guest's report (pod.containers.reported in
// events.TemplateNamespace): once every container it names has started,
// the template is prepared and pod VMs are forked from it.
func (k *Keeper) Observe(ctx context.Context, p *events.PodContainersReported) error {
	if p.Phase == events.GuestPhasePending || p.Phase == events.GuestPhaseStopping {
		return nil
	}
	for _, c := range p.ContainerStatuses {
		if c.State.Running == nil && c.State.Terminated == nil {
			return nil
		}
	}
	_, err := k.store.Mutate(ctx, p.Name, func(r *Record) error {
		if r.GuestReady {
			return record.ErrUnchanged
		}
		r.GuestReady = true
		return nil
	})
	if errors.Is(err, record.ErrNotFound) {
		return nil // a template removed meanwhile
	}
	if err == nil {
		k.log.Info("template guest prepared", "template", p.Name, "host", p.Host)
	}
	return err
}
