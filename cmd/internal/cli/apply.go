package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	recstore "github.com/podvisor/podvisor/shared/record"
)

func newApplyCmd(g *globals) *cobra.Command {
	var (
		files     []string
		recursive bool
		wait      time.Duration
		dryRun    string
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR|URL|- [-f ...]",
		Short: "Request the objects of manifests: v1 Pods; podvisor.io/v1alpha1 Networks, NetworkServices, Migrations, GuestClusters, VirtualMachines, VirtualMachineClasses and VirtualMachineImages",
		Long: `apply reads multi-document YAML (or JSON) manifests and publishes one event per object:
pod.requested for a Kubernetes v1 Pod, and for the podvisor.io/v1alpha1 kinds network.declared for
a Network, network.service.declared for a NetworkService, migration.requested for a Migration (of a
pod), guestcluster.requested for a GuestCluster, vm.declared for a VirtualMachine (a native VM),
vm.class.declared for a VirtualMachineClass and vm.image.declared for a VirtualMachineImage.
-f may be repeated and names a file, a directory (its .yaml, .yml and .json files; -R for
subdirectories too), an http(s) URL or - for standard input; a v1 List (what 'get -o yaml' prints)
contributes its items. Every document of every source is checked first, and apply is all or
nothing: one bad document means nothing is published. Each bad document is reported on its own
line naming the source, the document and the field, and a last line says that nothing was
applied (exit 1). --dry-run checks the same way.

An exported pod applies as it is: the fields podvisor set (spec.nodeName, status, uid,
resourceVersion, creationTimestamp) are ignored when they match the pod's record, so
'podvisor get pod web -o yaml | podvisor apply -f -' prints "unchanged".

--dry-run=client checks the manifests and publishes nothing; --dry-run=server also compares them
with the records (unchanged, or refused because the pod exists with another spec).

A pod or VirtualMachine that exists as declared prints "unchanged" (so does a Network declared
again as it is); a GuestCluster change that its controller would refuse is rejected before it is
published. For pods and VirtualMachines, apply then waits up to --wait for the provisioner's
admission and prints whether each was accepted or rejected (and why). A Network prints "requested",
then, within the same --wait, what network-config made of it: accepted with the new version once it
is pushed to the hosts (ready, or degraded and why), or rejected with the reason: InvalidSpec (a
scope or CIDR that does not fit here) or InUse (a spec.cidr or spec.gateway that would strand
addresses pods or VMs hold on the network; the current version stays). The other kinds print
"requested". apply exits non-zero when an object was rejected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return usageError("-f is required (a file, directory, URL, or - for standard input)")
			}
			mode, err := parseDryRun(dryRun)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			sources, err := readSources(ctx, files, recursive, g.stdin)
			if err != nil {
				return nothingApplied(err)
			}
			// The bus is dialled only when needed: to publish, for a
			// server dry run, or to compare an exported pod's
			// server-set fields with its record.
			var b *bus.Bus
			defer func() {
				if b != nil {
					b.Close()
				}
			}()
			dial := func() (*bus.Bus, error) {
				if b == nil {
					var err error
					if b, err = g.connect(ctx); err != nil {
						return nil, err
					}
				}
				return b, nil
			}
			// Every document of every source is checked before anything
			// is published, and every bad one is named.
			var (
				reqs     []request
				problems []error
			)
			for _, src := range sources {
				if err := dropServerFields(ctx, &src, dial); err != nil {
					return nothingApplied(err)
				}
				objs, err := events.DecodeObjects(src.stream())
				if err != nil {
					problems = append(problems, inSource(src.name, err)...)
					continue
				}
				rs, err := requestsFor(objs)
				if err != nil {
					problems = append(problems, inSource(src.name, err)...)
				}
				reqs = append(reqs, rs...)
			}
			if len(problems) > 0 {
				return nothingApplied(problems...)
			}
			if len(reqs) == 0 {
				return fmt.Errorf("%s: no objects", strings.Join(files, ", "))
			}
			if mode == dryRunClient {
				for _, r := range reqs {
					fmt.Fprintf(g.stdout, "%s valid (dry run)\n", r.what)
				}
				return nil
			}
			if _, err := dial(); err != nil {
				return err
			}
			if mode == dryRunServer {
				return applyServerDryRun(ctx, b, reqs, g)
			}
			return apply(ctx, b, reqs, wait, g)
		},
		Annotations: requests(),
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file, directory, http(s) URL, or - for standard input (repeatable)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "R", false, "read the directories of -f and their subdirectories")
	cmd.Flags().DurationVar(&wait, "wait", 10*time.Second, "how long to wait for the admission of pods and VMs and for networks to be applied (0: do not wait)")
	cmd.Flags().StringVar(&dryRun, "dry-run", "none", "client: check and publish nothing; server: also compare with the records; none: apply")
	cmd.Flags().Lookup("dry-run").NoOptDefVal = "client"
	return cmd
}

// dryRun modes, as kubectl's --dry-run.
type dryRun int

const (
	dryRunNone dryRun = iota
	dryRunClient
	dryRunServer
)

func parseDryRun(s string) (dryRun, error) {
	switch s {
	case "", "none", "false":
		return dryRunNone, nil
	case "client", "true":
		return dryRunClient, nil
	case "server":
		return dryRunServer, nil
	}
	return dryRunNone, usageError("--dry-run %q: want none, client or server", s)
}

// dropServerFields removes, from each exported v1 Pod, the fields podvisor
// sets when they match the pod's record, so an exported pod re-applies as
// unchanged. A nodeName or metadata.uid that differs from the record (or
// names a pod that does not exist) is kept, and validation refuses it as any
// user-set nodeName or client-chosen uid. status is podvisor's to write and
// is always dropped.
func dropServerFields(ctx context.Context, src *manifestSource, dial func() (*bus.Bus, error)) error {
	var pods jetstream.KeyValue
	for i, doc := range src.docs {
		var obj map[string]any
		if json.Unmarshal(doc, &obj) != nil || obj["apiVersion"] != "v1" || obj["kind"] != events.KindPod {
			continue
		}
		changed := false
		if _, ok := obj["status"]; ok {
			delete(obj, "status")
			changed = true
		}
		spec, _ := obj["spec"].(map[string]any)
		meta, _ := obj["metadata"].(map[string]any)
		node, _ := spec["nodeName"].(string)
		uid, _ := meta["uid"].(string)
		if node != "" || uid != "" {
			ns, _ := meta["namespace"].(string)
			name, _ := meta["name"].(string)
			if ns == "" {
				ns = events.DefaultNamespace
			}
			if pods == nil {
				b, err := dial()
				if err != nil {
					return fmt.Errorf("%s: pod %s/%s sets spec.nodeName or metadata.uid; comparing it with the pod's record: %w", src.name, ns, name, err)
				}
				if pods, err = b.KV(ctx, events.BucketPods); err != nil {
					return err
				}
			}
			e, err := pods.Get(ctx, events.PodRecordKey(ns, name))
			if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return err
			}
			var rec events.PodRecord
			if err == nil && json.Unmarshal(e.Value(), &rec) == nil {
				if node != "" && rec.Host == node {
					delete(spec, "nodeName")
					changed = true
				}
				if uid != "" && rec.UID == uid {
					delete(meta, "uid")
					changed = true
				}
			}
		}
		if changed {
			j, err := json.Marshal(obj)
			if err != nil {
				return err
			}
			src.docs[i] = j
		}
	}
	return nil
}

// applyServerDryRun says what apply would do, from the records, and
// publishes nothing.
func applyServerDryRun(ctx context.Context, b *bus.Bus, reqs []request, g *globals) error {
	pods, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return err
	}
	refused := 0
	for _, r := range reqs {
		if !r.isPod {
			fmt.Fprintf(g.stdout, "%s requested (server dry run)\n", r.what)
			continue
		}
		same, exists, err := podState(ctx, pods, r.pod)
		switch {
		case err != nil:
			return fmt.Errorf("%s: %w", r.what, err)
		case same:
			fmt.Fprintf(g.stdout, "%s unchanged (server dry run)\n", r.what)
		case exists:
			refused++
			fmt.Fprintf(g.stdout, "%s would be rejected: the pod exists with another spec (pods are immutable; delete it first) (server dry run)\n", r.what)
		default:
			fmt.Fprintf(g.stdout, "%s requested (server dry run)\n", r.what)
		}
	}
	if refused > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of the pods would be rejected", refused)}
	}
	return nil
}

// errNothingApplied ends the errors of manifests that failed their checks,
// so that a user who named several files does not take the good ones for
// applied.
var errNothingApplied = errors.New("nothing was applied")

// nothingApplied is the error of an apply stopped before it published
// anything: each problem on its own line (Main prints a joined error so),
// then that nothing was applied. A usage error stays one, with its exit code.
func nothingApplied(problems ...error) error {
	var ee *exitError
	if len(problems) == 1 && errors.As(problems[0], &ee) {
		return problems[0]
	}
	return &exitError{code: 1, err: errors.Join(append(problems, errNothingApplied)...)}
}

// inSource names the source in each problem of err (one, or an errors.Join
// of one per document), so that every line says where it is.
func inSource(source string, err error) []error {
	errs := []error{err}
	if many, ok := err.(interface{ Unwrap() []error }); ok {
		errs = many.Unwrap()
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s: %w", source, e)
	}
	return out
}

func displayName(file string) string {
	if file == "-" {
		return "standard input"
	}
	return file
}

// request is one event apply publishes.
type request struct {
	what  string // pod/default/web, network/frontend
	event event.Event
	isPod bool
	pod   *corev1.Pod // normalized, for pods
	// vm is the declared VM (defaults applied), whose admission apply
	// waits for as for pods.
	vm *events.VirtualMachine
	// gc is the requested guest cluster, checked against its record
	// before it is published.
	gc *events.GuestCluster
	// network is the declared network, compared with its record.
	network *events.Network
}

// requestsFor makes the requests of the valid objects; the error, when some
// are not, joins one per bad document.
func requestsFor(objs []events.Object) ([]request, error) {
	var (
		out  []request
		errs []error
	)
	for _, o := range objs {
		var (
			ceType, kind string
			payload      events.Payload
			isPod        bool
			normalized   *corev1.Pod
		)
		switch {
		case o.Pod != nil:
			pod := o.Pod.DeepCopy()
			events.NormalizePod(pod)
			normalized, isPod = pod, true
			payload, ceType, kind = &events.PodRequested{Pod: *pod}, events.TypePodRequested, "pod"
		case o.Network != nil:
			payload, ceType, kind = &events.NetworkDeclared{Network: *o.Network}, events.TypeNetworkDeclared, "network"
		case o.NetworkService != nil:
			payload, ceType, kind = &events.NetworkServiceDeclared{Service: *o.NetworkService}, events.TypeNetworkServiceDeclared, "networkservice"
		case o.Migration != nil:
			req := o.Migration.Request(uuid.NewString())
			payload, ceType, kind = &req, events.TypeMigrationRequested, "migration"
		case o.GuestCluster != nil:
			gc := *o.GuestCluster
			gc.Normalize()
			payload, ceType, kind = &events.GuestClusterRequested{GuestCluster: gc}, events.TypeGuestClusterRequested, "guestcluster"
		case o.VM != nil:
			vm := *o.VM
			vm.Metadata.Namespace = vm.Namespace()
			payload, ceType, kind = &events.VMDeclared{VM: vm}, events.TypeVMDeclared, "vm"
		case o.VMClass != nil:
			payload, ceType, kind = &events.VMClassDeclared{Class: *o.VMClass}, events.TypeVMClassDeclared, "vmclass"
		case o.VMImage != nil:
			payload, ceType, kind = &events.VMImageDeclared{Image: *o.VMImage}, events.TypeVMImageDeclared, "vmimage"
		default:
			errs = append(errs, fmt.Errorf("document %d: kind %q is not supported", o.Document, o.Kind))
			continue
		}
		// The event travels on the object's key, and apply names the object
		// kind/key as kubectl does; a migration is named by its ID instead,
		// since its key is its pod's.
		subject := payload.ObjectKey()
		what := kind + "/" + subject
		if m, ok := payload.(*events.MigrationRequested); ok {
			what = kind + "/" + m.ID
		}
		if err := payload.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("document %d (%s): %w", o.Document, what, err))
			continue
		}
		ev, err := bus.NewEvent(CLISource, ceType, subject, payload)
		if err != nil {
			errs = append(errs, fmt.Errorf("document %d (%s): %w", o.Document, what, err))
			continue
		}
		r := request{what: what, event: ev, isPod: isPod, pod: normalized}
		if d, ok := payload.(*events.VMDeclared); ok {
			r.vm = &d.VM
		}
		if d, ok := payload.(*events.GuestClusterRequested); ok {
			r.gc = &d.GuestCluster
		}
		if d, ok := payload.(*events.NetworkDeclared); ok {
			r.network = &d.Network
		}
		out = append(out, r)
	}
	return out, errors.Join(errs...)
}

func apply(ctx context.Context, b *bus.Bus, reqs []request, wait time.Duration, g *globals) error {
	pending := map[string]string{} // pod key → what
	vmPending, netRequests := 0, 0
	for _, r := range reqs {
		if r.isPod || r.vm != nil {
			pending[r.event.Subject()] = r.what
		}
		if r.vm != nil {
			vmPending++
		}
		if r.network != nil && wait > 0 {
			netRequests++
		}
	}
	// Networks are answered in their records: apply follows those of the
	// networks it declared.
	var netWaits []*networkWait
	netWhat := map[*networkWait]string{}
	var answers jetstream.ConsumeContext
	results := make(chan event.Event, 64)
	done := make(chan struct{}) // closed when apply returns: no one reads results then
	if wait > 0 && len(pending) > 0 {
		// Listen before publishing so that a fast answer is not missed.
		// Only answers about the objects of this apply are passed on, and
		// none is dropped: other clients' pods do not crowd out ours.
		want := make(map[string]bool, len(pending))
		for subject := range pending {
			want[subject] = true
		}
		forward := func(stream string, subjects ...string) (jetstream.ConsumeContext, error) {
			c, err := b.JetStream().OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
				FilterSubjects: subjects,
				DeliverPolicy:  jetstream.DeliverNewPolicy,
			})
			if err != nil {
				return nil, err
			}
			return c.Consume(func(m jetstream.Msg) {
				if ev, err := bus.DecodeMessage(m); err == nil && want[ev.Subject()] {
					select {
					case results <- ev:
					case <-done:
					}
				}
			})
		}
		podAnswers, err := forward(events.StreamPods, events.SubjectPodAccepted, events.SubjectPodRejected)
		if err != nil {
			return err
		}
		answers = podAnswers
		defer answers.Stop()
		if vmPending > 0 {
			vmAnswers, err := forward(events.StreamVMs, events.SubjectVMAccepted, events.SubjectVMRejected)
			if err != nil {
				return err
			}
			defer vmAnswers.Stop()
		}
		defer close(done) // before Stop: a callback blocked on results lets go
	}
	pods, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return err
	}
	vms, err := b.KV(ctx, events.BucketVMs)
	if err != nil {
		return err
	}
	gcs, err := b.KV(ctx, events.BucketGuestClusters)
	if err != nil {
		return err
	}
	nets, err := b.KV(ctx, events.BucketNetworks)
	if err != nil {
		return err
	}
	// Many objects on a terminal: bars instead of a line per object, then
	// a summary (rejections are still listed one by one).
	out := g.stdout
	var bars *progressBars
	published, admitted := func(int) {}, func(int) {}
	if len(reqs) >= minBulk && isTerminal(g.stdout) {
		bars = newProgressBars(g.stdout)
		published = bars.bar("published", len(reqs))
		admitted = bars.bar("admitted", len(pending)+netRequests)
		out = io.Discard
	}
	summary := map[string]int{}
	var rejections []string
	rejected := 0
	reject := func(line string) {
		fmt.Fprintln(out, line)
		if bars != nil {
			rejections = append(rejections, line)
		}
		summary["rejected"]++
		rejected++
	}
	defer func() {
		if bars == nil {
			return
		}
		bars.done()
		for _, l := range rejections {
			fmt.Fprintln(g.stdout, l)
		}
		fmt.Fprintf(g.stdout, "%d objects: %d requested, %d unchanged, %d accepted, %d rejected\n",
			len(reqs), summary["requested"], summary["unchanged"], summary["accepted"], summary["rejected"])
	}()
	for _, r := range reqs {
		// An identical pod or VM that already exists is a no-op for its
		// controller, which then has nothing to answer: say so here.
		var same bool
		var err error
		switch {
		case r.isPod:
			same, err = unchangedPod(ctx, pods, r.pod)
		case r.vm != nil:
			same, err = unchangedVM(ctx, vms, r.vm)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", r.what, err)
		}
		if same {
			delete(pending, r.event.Subject())
			fmt.Fprintf(out, "%s unchanged\n", r.what)
			summary["unchanged"]++
			published(1)
			admitted(1)
			continue
		}
		if r.gc != nil {
			// A change the guest cluster controller would refuse is
			// refused here, where the user sees it; it refuses it too.
			if refusal, err := guestClusterChangeRefused(ctx, gcs, r.gc); err != nil {
				return fmt.Errorf("%s: %w", r.what, err)
			} else if refusal != "" {
				reject(r.what + " rejected: " + refusal)
				published(1)
				continue
			}
		}
		// A network declared again as it is still goes out: network-config
		// makes no new version of it but converges it again.
		netSame, netSince := false, time.Time{}
		if r.network != nil {
			if netSame, netSince, err = networkAsDeclared(ctx, nets, r.network); err != nil {
				return fmt.Errorf("%s: %w", r.what, err)
			}
		}
		if err := b.Publish(ctx, r.event); err != nil {
			return fmt.Errorf("%s: %w", r.what, err)
		}
		published(1)
		switch {
		case netSame:
			fmt.Fprintf(out, "%s unchanged\n", r.what)
			summary["unchanged"]++
			if wait > 0 {
				admitted(1)
			}
		case r.network != nil && wait > 0:
			// Said now, as network restore does; the outcome follows
			// from the network's record.
			fmt.Fprintf(out, "%s requested\n", r.what)
			w := &networkWait{name: r.network.Metadata.Name, event: r.event.ID(), since: netSince}
			netWaits = append(netWaits, w)
			netWhat[w] = r.what
		case !r.isPod && r.vm == nil || wait <= 0:
			fmt.Fprintf(out, "%s requested\n", r.what)
			summary["requested"]++
		}
	}
	// Pods and VMs, then networks, within the one --wait: answers that
	// came meanwhile are buffered (pods, VMs) or in the records (networks).
	deadline := time.Now().Add(wait)
	timedOut := func() error {
		for _, what := range pending {
			list := "pods"
			if strings.HasPrefix(what, "vm/") {
				list = "vms"
			}
			fmt.Fprintf(out, "%s requested (no admission answer within %s; see 'podvisor get %s')\n", what, wait, list)
			summary["requested"]++
		}
		return nil
	}
	answer := func(ev event.Event) (bool, error) {
		what, ok := pending[ev.Subject()]
		if !ok {
			return false, nil
		}
		delete(pending, ev.Subject())
		admitted(1)
		if ev.Type() == events.TypePodAccepted || ev.Type() == events.TypeVMAccepted {
			fmt.Fprintf(out, "%s accepted\n", what)
			summary["accepted"]++
			return len(pending) == 0, nil
		}
		line := what + " rejected"
		if ev.Type() == events.TypeVMRejected {
			var rej events.VMRejected
			if err := ev.DataAs(&rej); err == nil {
				line += ": " + rej.Reason + ": " + rej.Message
			}
		} else {
			var rej events.PodRejected
			if err := ev.DataAs(&rej); err == nil {
				line += ": " + rej.Reason + ": " + rej.Message
			}
		}
		reject(line)
		return len(pending) == 0, nil
	}
	if answers != nil && len(pending) > 0 {
		if err := awaitAnswers(ctx, wait, timedOut, answer, results); err != nil {
			return err
		}
	}
	if len(netWaits) > 0 {
		unanswered, err := awaitNetworks(ctx, nets, netWaits, deadline)
		if err != nil {
			return err
		}
		for _, w := range netWaits {
			what := netWhat[w]
			admitted(1)
			a := w.answer
			switch {
			case slices.Contains(unanswered, w):
				fmt.Fprintf(out, "%s not applied within %s; see 'podvisor describe network %s'\n", what, wait, w.name)
				summary["requested"]++
			case a.refused:
				reject(what + " rejected: " + a.reason + ": " + a.message)
			case a.supersededBy > 0:
				fmt.Fprintf(out, "%s accepted: version %d, superseded by version %d\n", what, a.version, a.supersededBy)
				summary["accepted"]++
			case a.reason != "":
				fmt.Fprintf(out, "%s accepted: version %d %s: %s: %s\n", what, a.version, strings.ToLower(a.status), a.reason, a.message)
				summary["accepted"]++
			default:
				fmt.Fprintf(out, "%s accepted: version %d %s\n", what, a.version, strings.ToLower(a.status))
				summary["accepted"]++
			}
		}
	}
	if rejected > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of the requested objects were rejected", rejected)}
	}
	return nil
}

// guestClusterChangeRefused says why the guest cluster's record refuses
// gc ("" when it does not exist or takes it).
func guestClusterChangeRefused(ctx context.Context, gcs jetstream.KeyValue, gc *events.GuestCluster) (string, error) {
	rec, _, err := recstore.New[events.GuestClusterRecord](gcs, "guest cluster").
		Get(ctx, events.GuestClusterRecordKey(gc.Metadata.Namespace, gc.Metadata.Name))
	if rec == nil || err != nil {
		return "", err
	}
	if refused := gc.Spec.ChangeRefused(rec.Spec); refused != nil {
		return refused.Error(), nil
	}
	return "", nil
}

// unchangedPod reports whether the pod exists with the same spec (and, when
// the manifest fixes a uid, the same uid).
func unchangedPod(ctx context.Context, pods jetstream.KeyValue, pod *corev1.Pod) (bool, error) {
	same, _, err := podState(ctx, pods, pod)
	return same, err
}

// podState compares a pod with its record: same spec (and uid, when the
// manifest fixes one), or present with another.
func podState(ctx context.Context, pods jetstream.KeyValue, pod *corev1.Pod) (same, exists bool, err error) {
	rec, _, err := recstore.New[events.PodRecord](pods, "pod").Get(ctx, events.PodRecordKey(pod.Namespace, pod.Name))
	if rec == nil || err != nil {
		return false, false, err
	}
	if !rec.DeletionRequestedAt.IsZero() {
		return false, false, nil // going away: a new request makes a new pod
	}
	hash, err := events.PodSpecHash(pod)
	if err != nil {
		return false, true, err
	}
	return rec.SpecHash == hash && (pod.UID == "" || string(pod.UID) == rec.UID), true, nil
}

// networkAsDeclared compares a declared network with its record: whether the
// current version has the declared spec (a rejected or deleting network is
// never unchanged), and when the record was last written (zero when there
// is none), so that a refusal recorded after the declaration is told from an
// older one.
func networkAsDeclared(ctx context.Context, nets jetstream.KeyValue, n *events.Network) (same bool, updated time.Time, err error) {
	rec, _, err := recstore.New[events.NetworkRecord](nets, "network").Get(ctx, events.NetworkRecordKey(n.Metadata.Name))
	if rec == nil || err != nil {
		return false, time.Time{}, err
	}
	return rec.Version > 0 && rec.Status != events.NetworkStatusRejected && rec.Status != events.NetworkStatusDeleting &&
		rec.Spec.Equal(n.Spec), rec.UpdatedAt, nil
}

// unchangedVM reports whether the VM exists, not being deleted, with the
// declared spec (defaults applied) and metadata.
func unchangedVM(ctx context.Context, vms jetstream.KeyValue, vm *events.VirtualMachine) (bool, error) {
	rec, _, err := recstore.New[events.VMRecord](vms, "vm").Get(ctx, events.VMRecordKey(vm.Namespace(), vm.Metadata.Name))
	if rec == nil || err != nil {
		return false, err
	}
	spec := vm.Spec
	spec.PowerState, spec.Networks = spec.EffectivePowerState(), spec.EffectiveNetworks()
	return rec.DeletionRequestedAt.IsZero() && reflect.DeepEqual(rec.Spec, spec) &&
		reflect.DeepEqual(rec.Labels, vm.Metadata.Labels) && reflect.DeepEqual(rec.Annotations, vm.Metadata.Annotations), nil
}
