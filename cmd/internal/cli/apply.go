package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func newApplyCmd(g *globals) *cobra.Command {
	var (
		file string
		wait time.Duration
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE|-",
		Short: "Request the objects of a manifest: v1 Pods, podvisor.io/v1alpha1 Networks and Migrations",
		Long: `apply reads a multi-document YAML (or JSON) manifest and publishes one event per object:
pod.requested for a Kubernetes v1 Pod, network.declared for a Network, migration.requested for a
Migration. Every document is checked first; one bad document means nothing is published, and the
error names the document and the field.

For pods, apply then waits up to --wait for the provisioner's admission and prints whether each pod
was accepted or rejected (and why); it exits non-zero when one was rejected.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageError("-f is required (a file, or - for standard input)")
			}
			var r io.Reader = g.stdin
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			objs, err := events.DecodeObjects(r)
			if err != nil {
				return fmt.Errorf("%s: %w", displayName(file), err)
			}
			if len(objs) == 0 {
				return fmt.Errorf("%s: no objects", displayName(file))
			}
			reqs, err := requestsFor(objs)
			if err != nil {
				return fmt.Errorf("%s: %w", displayName(file), err)
			}
			b, err := g.connect(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			return apply(cmd.Context(), b, reqs, wait, g)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "manifest file, or - for standard input")
	cmd.Flags().DurationVar(&wait, "wait", 10*time.Second, "how long to wait for pod admission (0: do not wait)")
	return cmd
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
}

func requestsFor(objs []events.Object) ([]request, error) {
	var out []request
	for _, o := range objs {
		var (
			ceType, subject, what string
			payload               events.Payload
			isPod                 bool
			normalized            *corev1.Pod
		)
		switch {
		case o.Pod != nil:
			pod := o.Pod.DeepCopy()
			events.NormalizePod(pod)
			normalized = pod
			payload = &events.PodRequested{Pod: *pod}
			ceType, subject, what, isPod = events.TypePodRequested, events.PodKey(pod.Namespace, pod.Name), "pod/"+events.PodKey(pod.Namespace, pod.Name), true
		case o.Network != nil:
			payload = &events.NetworkDeclared{Network: *o.Network}
			ceType, subject, what = events.TypeNetworkDeclared, o.Network.Metadata.Name, "network/"+o.Network.Metadata.Name
		case o.Migration != nil:
			req := o.Migration.Request(uuid.NewString())
			payload = &req
			ceType, subject, what = events.TypeMigrationRequested, payload.ObjectKey(), "migration/"+req.ID
		default:
			return nil, fmt.Errorf("document %d: kind %q is not supported", o.Document, o.Kind)
		}
		if err := payload.Validate(); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", o.Document, what, err)
		}
		ev, err := bus.NewEvent(CLISource, ceType, subject, payload)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", o.Document, what, err)
		}
		out = append(out, request{what: what, event: ev, isPod: isPod, pod: normalized})
	}
	return out, nil
}

func apply(ctx context.Context, b *bus.Bus, reqs []request, wait time.Duration, g *globals) error {
	pending := map[string]string{} // pod key → what
	for _, r := range reqs {
		if r.isPod {
			pending[r.event.Subject()] = r.what
		}
	}
	var answers jetstream.ConsumeContext
	results := make(chan event.Event, 64)
	done := make(chan struct{}) // closed when apply returns: no one reads results then
	if wait > 0 && len(pending) > 0 {
		// Listen before publishing so that a fast answer is not missed.
		c, err := b.JetStream().OrderedConsumer(ctx, events.StreamPods, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{events.SubjectPodAccepted, events.SubjectPodRejected},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
		if err != nil {
			return err
		}
		// Only answers about the pods of this apply are passed on, and none
		// is dropped: other clients' pods do not crowd out ours.
		want := make(map[string]bool, len(pending))
		for subject := range pending {
			want[subject] = true
		}
		answers, err = c.Consume(func(m jetstream.Msg) {
			if ev, err := bus.DecodeMessage(m); err == nil && want[ev.Subject()] {
				select {
				case results <- ev:
				case <-done:
				}
			}
		})
		if err != nil {
			return err
		}
		defer answers.Stop()
		defer close(done) // before Stop: a callback blocked on results lets go
	}
	pods, err := b.KV(ctx, events.BucketPods)
	if err != nil {
		return err
	}
	for _, r := range reqs {
		if r.isPod {
			// An identical pod that already exists is a no-op for the
			// provisioner, which then has nothing to answer: say so here.
			if same, err := unchangedPod(ctx, pods, r.pod); err != nil {
				return fmt.Errorf("%s: %w", r.what, err)
			} else if same {
				delete(pending, r.event.Subject())
				fmt.Fprintf(g.stdout, "%s unchanged\n", r.what)
				continue
			}
		}
		if err := b.Publish(ctx, r.event); err != nil {
			return fmt.Errorf("%s: %w", r.what, err)
		}
		if !r.isPod || wait <= 0 {
			fmt.Fprintf(g.stdout, "%s requested\n", r.what)
		}
	}
	if answers == nil || len(pending) == 0 {
		return nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	rejected := 0
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			for _, what := range pending {
				fmt.Fprintf(g.stdout, "%s requested (no admission answer within %s; see 'podvisor get pods')\n", what, wait)
			}
			return nil
		case ev := <-results:
			what, ok := pending[ev.Subject()]
			if !ok {
				continue
			}
			delete(pending, ev.Subject())
			if ev.Type() == events.TypePodAccepted {
				fmt.Fprintf(g.stdout, "%s accepted\n", what)
				continue
			}
			var rej events.PodRejected
			if err := ev.DataAs(&rej); err != nil {
				fmt.Fprintf(g.stdout, "%s rejected\n", what)
			} else {
				fmt.Fprintf(g.stdout, "%s rejected: %s: %s\n", what, rej.Reason, rej.Message)
			}
			rejected++
		}
	}
	if rejected > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of the requested pods were rejected", rejected)}
	}
	return nil
}

// unchangedPod reports whether the pod exists with the same spec (and, when
// the manifest fixes a uid, the same uid).
func unchangedPod(ctx context.Context, pods jetstream.KeyValue, pod *corev1.Pod) (bool, error) {
	e, err := pods.Get(ctx, events.PodRecordKey(pod.Namespace, pod.Name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var rec events.PodRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return false, fmt.Errorf("pod record: %w", err)
	}
	hash, err := events.PodSpecHash(pod)
	if err != nil {
		return false, err
	}
	return rec.SpecHash == hash && rec.DeletionRequestedAt.IsZero() && (pod.UID == "" || string(pod.UID) == rec.UID), nil
}
