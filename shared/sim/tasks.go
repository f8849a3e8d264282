package sim

import (
	"context"
	"fmt"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// Waiting for the simulator's own tasks from inside the simulator.
//
// A client waits for a task through the property collector, and vcsim's
// WaitForUpdatesEx looks for changes on a 20 ms ticker: every task a
// client waits for costs up to 20 ms more than the task itself. The
// datacenter's own steps inside a task (an instant clone creates and powers
// on its child) need not pay that: taskWatch is a registry observer that
// hears every task's state change as it is made, and waitTask returns as
// soon as the task it waits for has ended.

// taskWatch wakes the waiters of tasks that end.
type taskWatch struct {
	changesOnly
	mu      sync.Mutex
	waiting map[string]chan struct{}
}

var taskWatchRef = types.ManagedObjectReference{Type: "PodvisorTaskWatch", Value: "tasks"}

func (w *taskWatch) Reference() types.ManagedObjectReference { return taskWatchRef }

// UpdateObject runs with the task's lock held, after the change is
// applied: the task's state is read from the object itself.
func (w *taskWatch) UpdateObject(_ *simulator.Context, obj mo.Reference, _ []types.PropertyChange) {
	t, ok := obj.(*mo.Task)
	if !ok || !taskEnded(t.Info.State) {
		return
	}
	w.mu.Lock()
	ch, ok := w.waiting[t.Self.Value]
	delete(w.waiting, t.Self.Value)
	w.mu.Unlock()
	if ok {
		close(ch)
	}
}

func taskEnded(s types.TaskInfoState) bool {
	return s == types.TaskInfoStateSuccess || s == types.TaskInfoStateError
}

// watch returns a channel closed when the task ends (or has ended by the
// time the caller checks, see waitTask).
func (w *taskWatch) watch(ref types.ManagedObjectReference) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.waiting == nil {
		w.waiting = map[string]chan struct{}{}
	}
	ch, ok := w.waiting[ref.Value]
	if !ok {
		ch = make(chan struct{})
		w.waiting[ref.Value] = ch
	}
	return ch
}

func (w *taskWatch) forget(ref types.ManagedObjectReference) {
	w.mu.Lock()
	delete(w.waiting, ref.Value)
	w.mu.Unlock()
}

// waitTask waits for one of the simulator's tasks, started by a call made
// from inside the datacenter, and returns its result or its fault.
func (d *Datacenter) waitTask(ctx context.Context, ref types.ManagedObjectReference) (types.AnyType, error) {
	ended := d.tasks.watch(ref)
	defer d.tasks.forget(ref)
	for {
		// Read after watching: a task that ended before the watch began
		// is seen here, one that ends later closes the channel.
		info, ok := d.taskInfo(ref)
		switch {
		case !ok:
			return nil, fmt.Errorf("task %s: %w", ref.Value, ErrNotFound)
		case info.State == types.TaskInfoStateSuccess:
			return info.Result, nil
		case info.State == types.TaskInfoStateError:
			if info.Error == nil {
				return nil, fmt.Errorf("task %s (%s) failed", ref.Value, info.DescriptionId)
			}
			// What a client's WaitForResult returns.
			return nil, task.Error{LocalizedMethodFault: info.Error, Description: info.Description}
		}
		select {
		case <-ended:
		case <-ctx.Done():
			return nil, fmt.Errorf("task %s: %w", ref.Value, ctx.Err())
		}
	}
}

// taskInfo reads a task's info under its lock.
func (d *Datacenter) taskInfo(ref types.ManagedObjectReference) (types.TaskInfo, bool) {
	m := d.model.Map()
	t, ok := m.Get(ref).(*simulator.Task)
	if !ok {
		return types.TaskInfo{}, false
	}
	var info types.TaskInfo
	// A context of its own, as vcsim's Task.Wait does: the lock is taken
	// for this read only, on behalf of no request.
	m.WithLock(&simulator.Context{}, t, func() { info = t.Info })
	return info, true
}
