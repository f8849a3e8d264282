package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// watchEvery is how often a booted VM's agent reads its configuration
// source again while it watches it; a forked child resumes within this of
// its clone. A read is not free: a configuration disk's drops the device's
// cached blocks and reads its header and payload (the spec, a few KiB);
// guestinfo's opens the backdoor again (a version trap and a probe) and
// reads the spec and the uuid over its RPC channel, one trap to the
// hypervisor for every 4 bytes sent or received, so a spec of a few KiB
// costs about a thousand traps. Only a template's agent reads for as long
// as it runs.
const watchEvery = 100 * time.Millisecond

// watcher reads a booted VM's configuration source again
// (BootConfig.Watch), where the hypervisor's changes of the VM's guestinfo
// show: nothing tells a guest of them. A spec of the same pod that differs
// from the last one seen (compared decoded: the boot configuration may
// hold the spec laid out otherwise than the source) is an update (the
// network of a pod forked before it, on updates); a spec of another pod
// in a template's VM means the VM is a forked child of the template, given
// the child's configuration (forked is closed, child holds it).
type watcher struct {
	boot    guestchannel.BootConfig
	spec    *guestchannel.PodSpec
	log     *slog.Logger
	updates chan *guestchannel.PodSpec
	forked  chan struct{}

	mu      sync.Mutex
	last    *guestchannel.PodSpec // the spec last passed on (at first, the booted one)
	failing bool                  // a read failed and was logged: log again only once it works
	// refused is why the spec the source holds now is neither this pod's
	// nor one the agent can take over (nil: it is this pod's): logged
	// once for each reason, and a template's agent greets no one meanwhile.
	refused error
	child   *bootconfig.Config
}

// watching says whether cfg's agent watches its source: a booted VM's
// (Watch set) that is a template's, or whose spec waits for the network.
func watching(cfg *bootconfig.Config) bool {
	return cfg.Boot.Watch != "" && (cfg.Spec.Template || cfg.Spec.NetworkPending)
}

func newWatcher(cfg *bootconfig.Config, log *slog.Logger) *watcher {
	return &watcher{boot: cfg.Boot, spec: cfg.Spec, log: log, last: cfg.Spec,
		updates: make(chan *guestchannel.PodSpec, 4), forked: make(chan struct{})}
}

// run reads the source every watchEvery until ctx ends, the VM is taken
// by a child, or (not a template) the spec no longer waits for anything.
func (w *watcher) run(ctx context.Context) {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if forked, done, _ := w.check(); forked || done {
			return
		}
	}
}

// errForked ends a template's channel session once a child has its VM.
var errForked = errors.New("the VM is a forked child's now")

// beforeGreet is the channel's hook before each hello: a forked child's
// host side connects its own line at once and asks for a hello, which must
// be the child's and never the template's, so the source is read first.
// It fails, which ends the template's channel session without a hello,
// while the VM belongs to a child, and also whenever the source does not
// show that the VM is still the template's: it cannot be read, or it
// holds a spec that is not the template's and cannot be taken over. The
// channel dials again and asks again.
func (w *watcher) beforeGreet() error {
	forked, _, err := w.check()
	if forked {
		return errForked
	}
	if err != nil {
		return fmt.Errorf("no hello as %s/%s: %w", w.spec.Namespace, w.spec.Name, err)
	}
	return nil
}

// check reads the source once. forked: the VM belongs to a child now;
// done: nothing more to watch for (a pod's spec that no longer waits);
// err: the source does not show that the VM is this pod's (it was not
// read, or it holds a spec of no pod this agent can run).
func (w *watcher) check() (forked, done bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.child != nil {
		return true, true, nil
	}
	next, spec, err := vmboot.Reread(w.boot)
	if errors.Is(err, vmboot.ErrSpecRefused) {
		// Read, and not this pod's spec (which decoded at boot): a
		// template's VM is someone else's, whose configuration the agent
		// cannot act on.
		return false, false, w.refuse(err)
	}
	if err != nil {
		if !w.failing {
			w.log.Warn("configuration source not read again", "source", w.boot.Watch, "err", err)
		}
		w.failing = true
		return false, false, fmt.Errorf("configuration source not read again: %w", err)
	}
	if w.failing {
		w.log.Info("configuration source read again", "source", w.boot.Watch)
		w.failing = false
	}
	if spec.UID != w.spec.UID {
		if !w.spec.Template {
			return false, false, w.refuse(fmt.Errorf("spec of another pod (uid %s): only a template's VM is forked", spec.UID))
		}
		if err := next.Validate(); err != nil {
			return false, false, w.refuse(fmt.Errorf("a forked child's configuration (uid %s): %w", spec.UID, err))
		}
		w.child = &bootconfig.Config{Boot: *next, Spec: spec}
		close(w.forked)
		w.log.Info("forked: the VM is another pod's now", "pod", spec.Namespace+"/"+spec.Name, "uid", spec.UID)
		return true, true, nil
	}
	if w.refused != nil {
		w.log.Info("the source holds this pod's spec again", "uid", spec.UID)
		w.refused = nil
	}
	if reflect.DeepEqual(spec, w.last) {
		return false, false, nil
	}
	select {
	case w.updates <- spec:
		w.last = spec
	default:
		// Read again at the next check: an update lost here would be
		// the network a pod waits for.
		w.log.Warn("spec update not passed on yet: four are waiting already", "uid", spec.UID)
		return false, false, nil
	}
	return false, !w.spec.Template && !spec.NetworkPending, nil
}

// refuse notes why the source's spec is not this pod's and cannot be
// taken over, logging each new reason once (a template's agent loudly: it
// greets no one until the source says whose VM it is) and returns it;
// w.mu held.
func (w *watcher) refuse(why error) error {
	if w.refused == nil || w.refused.Error() != why.Error() {
		if w.spec.Template {
			w.log.Error("the VM's spec is not the template's and cannot be taken over: no hello until it is either",
				"source", w.boot.Watch, "err", why)
		} else {
			w.log.Warn("spec read again refused", "source", w.boot.Watch, "err", why)
		}
	}
	w.refused = why
	return why
}
