package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

func init() {
	registerResource(&resource{
		names:      []string{"guestclusters", "guestcluster", "gc"},
		kind:       events.KindGuestCluster,
		bucket:     events.BucketGuestClusters,
		namespaced: true,
		header:     []string{"NAME", "VERSION", "CONTROL PLANE", "WORKERS", "PHASE", "PODS", "AGE", "ENDPOINT"},
		wideHeader: []string{"NAMESPACES", "REASON"},
		wide: func(r record) []string {
			g := &r.(*guestClusterRow).GuestClusterRecord
			return []string{fmt.Sprint(g.AllowedNamespaces()), dash(joinReason(g.Reason, g.Message))}
		},
		decode: decodeRow[guestClusterRow],
	})
}

// guestClusterRow is one guest cluster; its kubeconfig is not in the record
// (`get guestcluster NAME --kubeconfig` prints it to an admin).
type guestClusterRow struct{ events.GuestClusterRecord }

func (g *guestClusterRow) Namespace() string { return g.GuestClusterRecord.Namespace }
func (g *guestClusterRow) Name() string      { return g.GuestClusterRecord.Name }
func (g *guestClusterRow) Object() any       { return g.GuestClusterRecord }

func (g *guestClusterRow) Row(now time.Time) []string {
	r := &g.GuestClusterRecord
	nodes := func(n events.GuestClusterNodes) string {
		if n.ClassName == "" {
			return strconv.Itoa(int(n.Replicas))
		}
		return fmt.Sprintf("%d×%s", n.Replicas, n.ClassName)
	}
	// WORKERS: ready of wanted (a worker is ready while its VM runs).
	workers := fmt.Sprintf("%d/%s", r.ReadyWorkers, nodes(r.Spec.Workers))
	// CONTROL PLANE: likewise when its VMs are listed (control planes in VMs).
	cps := nodes(r.Spec.ControlPlane)
	if len(r.ControlPlanes) > 0 {
		cps = fmt.Sprintf("%d/%s", r.ReadyControlPlanes, cps)
	}
	return []string{r.Name, r.Spec.Version, cps, workers, r.Phase, strconv.Itoa(r.Pods), age(r.CreatedAt, now), dash(r.Endpoint)}
}

func joinReason(reason, msg string) string {
	if reason != "" && msg != "" {
		return reason + ": " + msg
	}
	return reason + msg
}

// printKubeconfig prints the admin kubeconfig of a Ready guest cluster. It
// is in a bucket only the admin identity (and the guest cluster controller)
// may read: the server refuses a client, and the error says which identity
// to use.
func (g *globals) printKubeconfig(ctx context.Context, namespace, name string) error {
	return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
		key := events.GuestClusterRecordKey(namespace, name)
		rkv, err := b.KV(ctx, events.BucketGuestClusters)
		if err != nil {
			return err
		}
		e, err := rkv.Get(ctx, key)
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
		if !r.HasKubeconfig {
			return fmt.Errorf("guest cluster %s/%s has no kubeconfig yet (phase %s%s)", namespace, name, r.Phase, prefixed(": ", joinReason(r.Reason, r.Message)))
		}
		// A refused request gets no answer, only the server's asynchronous
		// permissions error: wait a few seconds, not the command's whole time.
		short, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var k events.GuestClusterKubeconfig
		kkv, err := b.KV(short, events.BucketGuestClusterKubeconfigs)
		if err == nil {
			if e, err = kkv.Get(short, key); err == nil {
				err = json.Unmarshal(e.Value(), &k)
			}
		}
		if err != nil {
			if last := b.Conn().LastError(); last != nil && strings.Contains(strings.ToLower(last.Error()), "permissions violation") {
				return fmt.Errorf("the kubeconfig of guest cluster %s/%s is for admins: this identity may not read it (%v); "+
					"use an admin creds file, e.g. --nats-creds <state dir>/nats-auth/admin.creds", namespace, name, last)
			}
			return fmt.Errorf("read the kubeconfig of guest cluster %s/%s: %w", namespace, name, err)
		}
		_, err = fmt.Fprint(g.stdout, k.Kubeconfig)
		return err
	})
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}
