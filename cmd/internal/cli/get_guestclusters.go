package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"guestclusters", "guestcluster", "gc"},
		kind:       events.KindGuestCluster,
		bucket:     events.BucketGuestClusters,
		namespaced: true,
		header:     []string{"VERSION", "CONTROL PLANE", "WORKERS", "PHASE", "PODS", "AGE", "ENDPOINT"},
		wideHeader: []string{"NAMESPACES", "REASON"},
		wide: func(r record) []string {
			g := &r.(*guestClusterRow).GuestClusterRecord
			return []string{fmt.Sprint(g.AllowedNamespaces()), dash(joinReason(g.Reason, g.Message))}
		},
		decode: func(v []byte) (record, error) {
			var r guestClusterRow
			return &r, json.Unmarshal(v, &r.GuestClusterRecord)
		},
	})
}

// guestClusterRow is one guest cluster; -o json hides the kubeconfig
// (`get guestcluster NAME --kubeconfig` prints it).
type guestClusterRow struct{ events.GuestClusterRecord }

func (g *guestClusterRow) Namespace() string { return g.GuestClusterRecord.Namespace }
func (g *guestClusterRow) Name() string      { return g.GuestClusterRecord.Name }
func (g *guestClusterRow) Object() any {
	r := g.GuestClusterRecord
	if r.Kubeconfig != "" {
		r.Kubeconfig = "(podvisor get guestcluster " + r.Name + " -n " + r.Namespace + " --kubeconfig)"
	}
	return r
}

func (g *guestClusterRow) Row(now time.Time) []string {
	r := &g.GuestClusterRecord
	nodes := func(n events.GuestClusterNodes) string {
		if n.ClassName == "" {
			return strconv.Itoa(int(n.Replicas))
		}
		return fmt.Sprintf("%d×%s", n.Replicas, n.ClassName)
	}
	return []string{r.Spec.Version, nodes(r.Spec.ControlPlane), nodes(r.Spec.Workers), r.Phase, strconv.Itoa(r.Pods), age(r.CreatedAt, now), dash(r.Endpoint)}
}

func joinReason(reason, msg string) string {
	if reason != "" && msg != "" {
		return reason + ": " + msg
	}
	return reason + msg
}

// printKubeconfig prints the admin kubeconfig of a Ready guest cluster.
func (g *globals) printKubeconfig(ctx context.Context, namespace, name string) error {
	b, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	kv, err := b.KV(ctx, events.BucketGuestClusters)
	if err != nil {
		return err
	}
	e, err := kv.Get(ctx, events.GuestClusterRecordKey(namespace, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("guest cluster %s/%s not found", namespace, name)
	}
	if err != nil {
		return err
	}
	var r events.GuestClusterRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return fmt.Errorf("guest cluster %s/%s: %w", namespace, name, err)
	}
	if r.Kubeconfig == "" {
		return fmt.Errorf("guest cluster %s/%s has no kubeconfig yet (phase %s%s)", namespace, name, r.Phase, prefixed(": ", joinReason(r.Reason, r.Message)))
	}
	_, err = fmt.Fprint(g.stdout, r.Kubeconfig)
	return err
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}
