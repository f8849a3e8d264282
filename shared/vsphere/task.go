package vsphere

import (
	"context"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// WaitTask waits for the task ref to end and returns its info, and its
// fault as a task.Error when it failed: what object.Task.WaitForResult
// returns, for fewer calls.
//
// WaitForResult makes a property collector of its own, a filter on the
// task, waits for updates and destroys the collector: five calls at least,
// however long ago the task ended. Most tasks a pod VM waits for (create,
// power on) end in milliseconds, often before the caller gets to wait, so
// WaitTask reads the task's info once (one call) and returns at once if it
// has ended. Only a task still running is waited for through the property
// collector, which wakes on the change rather than polling.
//
// A task vCenter no longer knows fails with ManagedObjectNotFound, as it
// does with WaitForResult.
func WaitTask(ctx context.Context, c *vim25.Client, ref types.ManagedObjectReference) (*types.TaskInfo, error) {
	var t mo.Task
	if err := property.DefaultCollector(c).RetrieveOne(ctx, ref, []string{"info"}, &t); err != nil {
		return nil, err
	}
	switch t.Info.State {
	case types.TaskInfoStateSuccess:
		return &t.Info, nil
	case types.TaskInfoStateError:
		if t.Info.Error == nil {
			// vCenter always says why; should it not, the fault is
			// still a failure and not a success without a result.
			t.Info.Error = &types.LocalizedMethodFault{Fault: &types.SystemError{Reason: "task failed without a fault"}, LocalizedMessage: "task failed without a fault"}
		}
		return &t.Info, task.Error{LocalizedMethodFault: t.Info.Error, Description: t.Info.Description}
	}
	return object.NewTask(c, ref).WaitForResult(ctx)
}
