package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/podvisor/podvisor/agent/bootconfig"
	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/agent/vmboot"
)

// watchEvery is how often a booted VM's agent reads its configuration
// source again while it watches it. A read is one backdoor call per key,
// or a few sectors of the configuration disk; a forked child resumes
// within this of its clone.
const watchEvery = 100 * time.Millisecond

// watcher reads a booted VM's configuration source again
// (BootConfig.Watch), where the hypervisor's changes of the VM's guestinfo
// show: nothing tells a guest of them. A spec of the same pod is an update
// (the network of a pod forked before it, on updates); a spec of another
// pod in a template's VM means the VM is a forked child of the template,
// given the child's configuration (forked is closed, child holds it).
type watcher struct {
	boot    guestchannel.BootConfig
	spec    *guestchannel.PodSpec
	log     *slog.Logger
	updates chan *guestchannel.PodSpec
	forked  chan struct{}

	mu      sync.Mutex
	last    string // the spec last read, as the source holds it
	failing bool   // a read failed and was logged: log again only once it works
	child   *bootconfig.Config
}

// watching says whether cfg's agent watches its source: a booted VM's
// (Watch set) that is a template's, or whose spec waits for the network.
func watching(cfg *bootconfig.Config) bool {
	return cfg.Boot.Watch != "" && (cfg.Spec.Template || cfg.Spec.NetworkPending)
}

func newWatcher(cfg *bootconfig.Config, log *slog.Logger) *watcher {
	return &watcher{boot: cfg.Boot, spec: cfg.Spec, log: log, last: string(cfg.Boot.Spec),
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
		if forked, done := w.check(); forked || done {
			return
		}
	}
}

// errForked ends a template's channel session once a child has its VM.
var errForked = errors.New("the VM is a forked child's now")

// beforeGreet is the channel's hook before each hello: a forked child's
// host side connects its own line at once and asks for a hello, which must
// be the child's and never the template's, so the source is read first.
// It fails while the VM belongs to a child, which ends the template's
// channel session.
func (w *watcher) beforeGreet() error {
	if forked, _ := w.check(); forked {
		return errForked
	}
	return nil
}

// check reads the source once. forked: the VM belongs to a child now;
// done: nothing more to watch for (a pod's spec that no longer waits).
func (w *watcher) check() (forked, done bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.child != nil {
		return true, true
	}
	next, spec, err := vmboot.Reread(w.boot)
	if err != nil {
		if !w.failing {
			w.log.Warn("configuration source not read again", "source", w.boot.Watch, "err", err)
		}
		w.failing = true
		return false, false
	}
	if w.failing {
		w.log.Info("configuration source read again", "source", w.boot.Watch)
		w.failing = false
	}
	if string(next.Spec) == w.last {
		return false, false
	}
	if spec.UID != w.spec.UID {
		w.last = string(next.Spec)
		if !w.spec.Template {
			w.log.Warn("spec of another pod ignored: only a template's VM is forked", "uid", spec.UID)
			return false, false
		}
		if err := next.Validate(); err != nil {
			w.log.Warn("a forked child's configuration refused", "uid", spec.UID, "err", err)
			return false, false
		}
		w.child = &bootconfig.Config{Boot: *next, Spec: spec}
		close(w.forked)
		w.log.Info("forked: the VM is another pod's now", "pod", spec.Namespace+"/"+spec.Name, "uid", spec.UID)
		return true, true
	}
	select {
	case w.updates <- spec:
		w.last = string(next.Spec)
	default:
		// Read again at the next check: an update lost here would be
		// the network a pod waits for.
		w.log.Warn("spec update not passed on yet: four are waiting already", "uid", spec.UID)
		return false, false
	}
	return false, !w.spec.Template && !spec.NetworkPending
}
