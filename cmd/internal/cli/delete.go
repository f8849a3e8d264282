package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func newDeleteCmd(g *globals) *cobra.Command {
	var (
		namespace string
		selector  string
		dryRun    string
		wait      time.Duration
		files     []string
		recursive bool
	)
	cmd := &cobra.Command{
		Use:   "delete pod|network|networkservice|vm|vmclass|vmimage|guestcluster NAME... | delete pod -l SELECTOR | delete -f FILE",
		Short: "Request the deletion of pods, networks, network services, native VMs and their classes and images, or guest clusters",
		Long: `delete publishes pod.delete.requested, network.delete.requested, network.service.delete.requested
(a NetworkService: its addresses go back to the networks' pools), and so on. It checks first that the
object exists, so a typo fails here with a clear message; the services do the rest.

A network still used by pods, and a vmclass or vmimage still used by VMs, is refused: for those
kinds delete waits up to --wait for the answer (network-config's for a network, the provisioner's
for a class or an image) and prints "deleted", or exits 1 with the reason of the refusal, which
names the users.

-l deletes the pods of the namespace whose labels match; --dry-run=client|server prints what would
be deleted and publishes nothing (server also checks that each object exists). Deleting a guest
cluster deletes its pods, its VMs and its control plane. -f deletes the objects of manifests (what
'apply -f' takes: files, directories, URLs, - for standard input), each in its own namespace.`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: completeKindAndName(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			mode, err := parseDryRun(dryRun)
			if err != nil {
				return err
			}
			if len(files) > 0 {
				if len(args) > 0 || selector != "" {
					return usageError("delete -f: the manifests name the objects; give no kind, names or -l")
				}
				return g.deleteManifests(ctx, files, recursive, mode, wait)
			}
			if len(args) == 0 {
				return usageError("delete: name a kind and objects (delete pod web), or give manifests (-f FILE)")
			}
			kind, names := args[0], args[1:]
			sel, err := parseSelector(selector)
			if err != nil {
				return err
			}
			if len(names) == 0 && selector == "" {
				return usageError("delete %s: name the objects, or select pods with -l", kind)
			}
			if len(names) > 0 && selector != "" {
				return usageError("delete %s: give names or -l, not both", kind)
			}
			return g.deleteKind(ctx, kind, namespace, names, selector, sel, mode, wait)
		},
		Annotations: requests(),
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of the pods")
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "delete the pods whose labels match (app=web)")
	cmd.Flags().StringVar(&dryRun, "dry-run", "none", "client: print what would be deleted; server: also check each exists; none: delete")
	cmd.Flags().Lookup("dry-run").NoOptDefVal = "client"
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "for a network, vmclass or vmimage: how long to wait for the answer (deleted or refused; 0: do not wait)")
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "delete the objects of a manifest file, directory, http(s) URL, or - for standard input (repeatable)")
	cmd.Flags().BoolVarP(&recursive, "recursive", "R", false, "read the directories of -f and their subdirectories")
	return cmd
}

// deleteManifests deletes the objects the manifests name, in their order;
// every document is read and checked before anything is deleted.
func (g *globals) deleteManifests(ctx context.Context, files []string, recursive bool, mode dryRun, wait time.Duration) error {
	sources, err := readSources(ctx, files, recursive, g.stdin)
	if err != nil {
		return err
	}
	type target struct{ kind, namespace, name string }
	var targets []target
	for _, src := range sources {
		objs, err := events.DecodeObjects(src.stream())
		if err != nil {
			return fmt.Errorf("%s: %w", src.name, err)
		}
		for _, o := range objs {
			switch {
			case o.Pod != nil:
				ns := o.Pod.Namespace
				if ns == "" {
					ns = events.DefaultNamespace
				}
				targets = append(targets, target{"pod", ns, o.Pod.Name})
			case o.Network != nil:
				targets = append(targets, target{"network", "", o.Network.Metadata.Name})
			case o.NetworkService != nil:
				targets = append(targets, target{"networkservice", "", o.NetworkService.Metadata.Name})
			case o.GuestCluster != nil:
				gc := *o.GuestCluster
				gc.Normalize()
				targets = append(targets, target{"guestcluster", gc.Metadata.Namespace, gc.Metadata.Name})
			case o.VM != nil:
				targets = append(targets, target{"vm", o.VM.Namespace(), o.VM.Metadata.Name})
			case o.VMClass != nil:
				targets = append(targets, target{"vmclass", "", o.VMClass.Metadata.Name})
			case o.VMImage != nil:
				targets = append(targets, target{"vmimage", "", o.VMImage.Metadata.Name})
			default:
				return usageError("%s: document %d: a %s cannot be deleted (a migration is cancelled: podvisor migrate cancel ID)", src.name, o.Document, o.Kind)
			}
		}
	}
	if len(targets) == 0 {
		return usageError("%s: no objects", strings.Join(files, ", "))
	}
	// As kubectl: every object is asked for, in the manifest's order,
	// whatever became of the ones before it, and the command fails at the
	// end if one was refused (a class still used by a VM the manifest
	// names after it: delete it again once the VM is gone).
	ordered := targets
	var errs []error
	for _, t := range ordered {
		if err := g.deleteKind(ctx, t.kind, t.namespace, []string{t.name}, "", labels.Everything(), mode, wait); err != nil {
			if len(ordered) == 1 {
				return err
			}
			fmt.Fprintf(g.stderr, "error: %v\n", err)
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d deletions failed", len(errs), len(ordered))
	}
	return nil
}

// deleteKind deletes the named objects of one kind (or, for pods, those
// sel selects): what `delete KIND NAME...` and each document of
// `delete -f` do.
func (g *globals) deleteKind(ctx context.Context, kind, namespace string, names []string, selector string, sel labels.Selector, mode dryRun, wait time.Duration) error {
	var err error
	switch kind {
	case "pod", "pods", "po":
		if selector != "" {
			if names, err = g.selectPods(ctx, namespace, sel); err != nil {
				return err
			}
			if len(names) == 0 {
				fmt.Fprintf(g.stdout, "No pods in namespace %s match %q.\n", namespace, selector)
				return nil
			}
		}
		for _, name := range names {
			if mode == dryRunClient {
				fmt.Fprintf(g.stdout, "pod %s/%s deletion requested (dry run)\n", namespace, name)
				continue
			}
			if err := g.deleteObject(ctx, events.BucketPods, events.PodRecordKey(namespace, name), "pod "+namespace+"/"+name,
				events.TypePodDeleteRequested, events.PodKey(namespace, name),
				&events.PodDeleteRequested{Namespace: namespace, Name: name}, mode == dryRunServer); err != nil {
				return err
			}
		}
		return nil
	case "network", "networks", "net":
		if selector != "" {
			return usageError("delete networks: -l selects pods only (networks carry no labels)")
		}
		for _, name := range names {
			if mode == dryRunClient {
				fmt.Fprintf(g.stdout, "network %s deletion requested (dry run)\n", name)
				continue
			}
			if mode == dryRunServer {
				if err := g.deleteObject(ctx, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name,
					events.TypeNetworkDeleteRequested, name, &events.NetworkDeleteRequested{Name: name}, true); err != nil {
					return err
				}
				continue
			}
			if err := g.deleteNetwork(ctx, name, wait); err != nil {
				return err
			}
		}
		return nil
	case "networkservice", "networkservices", "netsvc":
		if selector != "" {
			return usageError("delete networkservices: -l selects pods only (network services carry no labels)")
		}
		for _, name := range names {
			if mode == dryRunClient {
				fmt.Fprintf(g.stdout, "networkservice %s deletion requested (dry run)\n", name)
				continue
			}
			if err := g.deleteObject(ctx, events.BucketNetServices, name, "networkservice "+name,
				events.TypeNetworkServiceDeleteRequested, name, &events.NetworkServiceDeleteRequested{Name: name}, mode == dryRunServer); err != nil {
				return err
			}
		}
		return nil
	case "guestcluster", "guestclusters", "gc":
		if selector != "" {
			return usageError("delete guestclusters: -l selects pods only")
		}
		for _, name := range names {
			if mode == dryRunClient {
				fmt.Fprintf(g.stdout, "guestcluster %s/%s deletion requested (dry run)\n", namespace, name)
				continue
			}
			ref := events.GuestClusterRef{Namespace: namespace, Name: name}
			if err := g.deleteObject(ctx, events.BucketGuestClusters, events.GuestClusterRecordKey(namespace, name), "guestcluster "+ref.ObjectKey(),
				events.TypeGuestClusterDeleteRequested, ref.ObjectKey(),
				&events.GuestClusterDeleteRequested{GuestClusterRef: ref}, mode == dryRunServer); err != nil {
				return err
			}
		}
		return nil
	case "vm", "vms", "virtualmachine", "vmclass", "vmclasses", "vmimage", "vmimages":
		if selector != "" {
			return usageError("delete %s: give names (-l selects pods only)", kind)
		}
		for _, name := range names {
			bucket, key, what, ceType, subject, payload := vmDeletion(kind, namespace, name)
			if mode == dryRunClient {
				fmt.Fprintf(g.stdout, "%s deletion requested (dry run)\n", what)
				continue
			}
			if mode == dryRunNone && wait > 0 && bucket != events.BucketVMs {
				if err := g.deleteVMClassOrImage(ctx, kind, name, wait); err != nil {
					return err
				}
				continue
			}
			if err := g.deleteObject(ctx, bucket, key, what, ceType, subject, payload, mode == dryRunServer); err != nil {
				return err
			}
		}
		return nil
	default:
		return usageError("cannot delete %q: want pod, network, networkservice, vm, vmclass, vmimage or guestcluster", kind)
	}
}

// selectPods lists the names of a namespace's pods whose labels match.
func (g *globals) selectPods(ctx context.Context, namespace string, sel labels.Selector) ([]string, error) {
	b, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	pods, err := readRecords[events.PodRecord](ctx, b, events.BucketPods)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range pods {
		if r.Namespace == namespace && r.DeletionRequestedAt.IsZero() && sel.Matches(labels.Set(r.Pod.Labels)) {
			names = append(names, r.Name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// deleteObject checks that the object exists and publishes its deletion
// request (with dryRun, only checks).
func (g *globals) deleteObject(ctx context.Context, bucket, key, what, ceType, subject string, payload events.Payload, dryRun bool) error {
	if err := payload.Validate(); err != nil {
		return usageError("%v", err)
	}
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		return g.requestDeletion(ctx, b, bucket, key, what, ceType, subject, payload, dryRun)
	})
}

// requestDeletion is deleteObject on a bus already dialled.
func (g *globals) requestDeletion(ctx context.Context, b *bus.Bus, bucket, key, what, ceType, subject string, payload events.Payload, dryRun bool) error {
	kv, err := b.KV(ctx, bucket)
	if err != nil {
		return err
	}
	entry, err := kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%s not found", what)
		}
		return err
	}
	if d, ok := payload.(*events.PodDeleteRequested); ok && d.UID == "" {
		// The pod just read is the one meant: its uid goes along as a
		// precondition (as kubectl delete --preconditions), so a pod
		// made again under the name meanwhile is refused, not deleted.
		// The provisioner orders deletes after requests anyway; this
		// says which pod in the delete itself, at no extra round trip.
		var rec struct {
			UID string `json:"uid"`
		}
		if json.Unmarshal(entry.Value(), &rec) == nil {
			d.UID = rec.UID
		}
	}
	ev, err := bus.NewEvent(CLISource, ceType, subject, payload)
	if err != nil {
		return err
	}
	if dryRun {
		fmt.Fprintf(g.stdout, "%s deletion requested (server dry run)\n", what)
		return nil
	}
	if err := b.Publish(ctx, ev); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s deletion requested\n", what)
	return nil
}

// deleteNetwork requests the deletion and, unless wait is 0, waits for
// network-config's answer: deleted, or refused (for example while pods use
// the network), which exits non-zero with the reason.
func (g *globals) deleteNetwork(ctx context.Context, name string, wait time.Duration) error {
	if wait <= 0 {
		return g.deleteObject(ctx, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name,
			events.TypeNetworkDeleteRequested, name, &events.NetworkDeleteRequested{Name: name}, false)
	}
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		answers, stop, err := followEvents(ctx, b, events.StreamNetworks, events.SubjectNetworkDeleted, events.SubjectNetworkDeleteRejected)
		if err != nil {
			return err
		}
		defer stop()
		if err := g.deleteObject(ctx, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name,
			events.TypeNetworkDeleteRequested, name, &events.NetworkDeleteRequested{Name: name}, false); err != nil {
			return err
		}
		timedOut := func() error {
			fmt.Fprintf(g.stdout, "no answer from network-config within %s; see 'podvisor get networks'\n", wait)
			return nil
		}
		return awaitAnswers(ctx, wait, timedOut, func(ev event.Event) (bool, error) {
			if ev.Subject() != name {
				return false, nil
			}
			if ev.Type() == events.TypeNetworkDeleted {
				fmt.Fprintf(g.stdout, "network %s deleted\n", name)
				return true, nil
			}
			var rej events.NetworkDeleteRejected
			_ = ev.DataAs(&rej)
			return true, &exitError{code: 1, err: fmt.Errorf("deletion of network %s refused: %s: %s", name, rej.Reason, rej.Message)}
		}, answers)
	})
}

// deleteVMClassOrImage requests the deletion of a VirtualMachineClass or
// VirtualMachineImage and waits up to wait for the provisioner's answer:
// the record goes away (the provisioner announces no deletion, so the
// record is watched), or vm.rejected refuses it (reason InUse while VMs
// use it), which exits non-zero with the reason.
func (g *globals) deleteVMClassOrImage(ctx context.Context, kind, name string, wait time.Duration) error {
	bucket, key, what, ceType, subject, payload := vmDeletion(kind, "", name)
	if err := payload.Validate(); err != nil {
		return usageError("%v", err)
	}
	rejKind, list := events.KindVirtualMachineClass, "vmclasses"
	if bucket == events.BucketVMImages {
		rejKind, list = events.KindVirtualMachineImage, "vmimages"
	}
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		// Both answers are listened for before the request goes out, so
		// that a fast one is not missed.
		kv, err := b.KV(ctx, bucket)
		if err != nil {
			return err
		}
		w, err := kv.Watch(ctx, key, jetstream.UpdatesOnly())
		if err != nil {
			return err
		}
		defer func() { _ = w.Stop() }()
		rejections, stop, err := followEvents(ctx, b, events.StreamVMs, events.SubjectVMRejected)
		if err != nil {
			return err
		}
		defer stop()
		if err := g.requestDeletion(ctx, b, bucket, key, what, ceType, subject, payload, false); err != nil {
			return err
		}
		timer := time.NewTimer(wait)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-timer.C:
				fmt.Fprintf(g.stdout, "no answer from the provisioner within %s; see 'podvisor get %s'\n", wait, list)
				return nil
			case e, ok := <-w.Updates():
				if !ok {
					return errors.New("watch closed by the server while waiting for the deletion")
				}
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					fmt.Fprintf(g.stdout, "%s deleted\n", what)
					return nil
				}
			case ev, ok := <-rejections:
				if !ok {
					return errors.New("event stream closed while waiting for an answer")
				}
				var rej events.VMRejected
				if ev.DataAs(&rej) != nil || rej.Kind != rejKind || rej.Name != name {
					continue
				}
				return &exitError{code: 1, err: fmt.Errorf("deletion of %s refused: %s: %s", what, rej.Reason, rej.Message)}
			}
		}
	})
}

// vmDeletion is the request that deletes a VM, a class or an image.
func vmDeletion(kind, namespace, name string) (bucket, key, what, ceType, subject string, payload events.Payload) {
	switch kind {
	case "vmclass", "vmclasses":
		return events.BucketVMClasses, name, "vmclass " + name, events.TypeVMClassDeleteRequested, name,
			&events.VMClassDeleteRequested{Name: name}
	case "vmimage", "vmimages":
		return events.BucketVMImages, name, "vmimage " + name, events.TypeVMImageDeleteRequested, name,
			&events.VMImageDeleteRequested{Name: name}
	}
	return events.BucketVMs, events.VMRecordKey(namespace, name), "vm " + namespace + "/" + name, events.TypeVMDeleteRequested,
		events.PodKey(namespace, name), &events.VMDeleteRequested{Namespace: namespace, Name: name}
}
