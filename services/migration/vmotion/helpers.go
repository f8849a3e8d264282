package vmotion

import (
	"errors"
	"strings"
	"time"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/progress"
	"github.com/vmware/govmomi/vim25/types"
)

// defaultCancelTimeout bounds the CancelTask call made after a wait timed
// out, so a vCenter that stopped answering cannot hold the caller.
const defaultCancelTimeout = 10 * time.Second

// waitAttempts bounds how often Wait resumes waiting on a task after the
// connection to vCenter failed.
const waitAttempts = 5

func newViews(vc *vim25.Client) *view.Manager { return view.NewManager(vc) }

// progressSink hands vCenter's task progress to report; the waiter closes
// the channel when the task ends.
func progressSink(report func(int)) progress.Sinker {
	return progress.SinkFunc(func() chan<- progress.Report {
		ch := make(chan progress.Report)
		go func() {
			for r := range ch {
				if report != nil && r.Error() == nil {
					report(int(r.Percentage()))
				}
			}
		}()
		return ch
	})
}

// isNotFound recognises vCenter's "that object is gone" fault.
func isNotFound(err error) bool {
	return err != nil && (fault.Is(err, &types.ManagedObjectNotFound{}) || strings.Contains(err.Error(), "has already been deleted or has not been completely created"))
}

// faultMessage turns a task error into its localized message, which is what
// a person reads in a failure event.
func faultMessage(err error) error {
	var te task.Error
	if errors.As(err, &te) && te.LocalizedMethodFault != nil && te.LocalizedMessage != "" {
		return errors.New(te.LocalizedMessage)
	}
	return err
}
