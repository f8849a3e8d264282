package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// NodeLease is the Lease (in kube-system) whose holder runs the podvisor
// node and the worker nodes' controller when the control plane has
// several members: exactly one member binds pods, asks the supervisor
// for them and reports their status, and another takes over within the
// Lease's duration when it stops renewing (its VM is off or cut off).
const NodeLease = "podvisor-node"

// Lease timing: kube-controller-manager's defaults.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// lead runs work while this member, identity, holds NodeLease, and
// campaigns again whenever it loses it, until ctx ends. work's context
// ends when the Lease is lost.
func lead(ctx context.Context, log *slog.Logger, client kubernetes.Interface, identity string,
	work func(ctx context.Context, ready chan<- struct{}) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: metav1.NamespaceSystem, Name: NodeLease},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	// One term's work at a time: client-go runs OnStartedLeading in a
	// goroutine of its own, which can still be stopping the last term's
	// node when the next term begins.
	var term sync.Mutex
	for ctx.Err() == nil {
		// A member whose work ends while it holds the Lease (an error)
		// gives the Lease up rather than hold it with no node running.
		ectx, cancel := context.WithCancel(ctx)
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, Name: NodeLease,
			LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			// A member that stops (SIGTERM) hands the node over at once.
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					defer cancel()
					term.Lock()
					defer term.Unlock()
					if lctx.Err() != nil {
						return
					}
					log.Info("this member runs the podvisor node", "lease", NodeLease, "identity", identity)
					if err := work(lctx, make(chan struct{})); err != nil && lctx.Err() == nil {
						log.Error("podvisor node", "err", err)
					}
				},
				OnStoppedLeading: func() {
					log.Info("this member no longer runs the podvisor node", "lease", NodeLease, "identity", identity)
				},
				OnNewLeader: func(holder string) {
					if holder != identity {
						log.Info("the podvisor node runs in another member", "holder", holder)
					}
				},
			},
		})
		if err != nil {
			cancel()
			return err
		}
		le.Run(ectx)
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(retryPeriod):
		}
	}
	return nil
}
