package sim

import (
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
)

// AddFault injects a fault into matching SOAP calls, e.g. every
// CreateVM_Task on any Folder. An empty ObjectType or ObjectName matches any
// ("*"); the rule is enabled whatever its Enabled field says, since a caller
// adding a rule wants it to act. The fault comes back from the *_Task call
// itself, not as a failed task.
func (d *Datacenter) AddFault(rule simulator.FaultInjectionRule) error {
	if rule.MethodName == "" {
		return errors.New("sim fault: MethodName: required (a SOAP method such as CreateVM_Task, or \"*\")")
	}
	if rule.Probability <= 0 || rule.Probability > 1 {
		return fmt.Errorf("sim fault: Probability: %v is out of range (0, 1]", rule.Probability)
	}
	if rule.MaxCount < 0 || rule.SkipCount < 0 || rule.Delay < 0 {
		return errors.New("sim fault: MaxCount, SkipCount and Delay must not be negative")
	}
	if rule.ObjectType == "" {
		rule.ObjectType = "*"
	}
	if rule.ObjectName == "" {
		rule.ObjectName = "*"
	}
	rule.Enabled = true
	d.model.Service.AddFaultRule(&rule)
	return nil
}

// FaultCounts reports how many faults each SOAP method has been given by
// the rules added with AddFault (method name → count), e.g. to show what a
// fault-injection run injected.
func (d *Datacenter) FaultCounts() map[string]int64 {
	rules := d.model.Service.GetFaultRules()
	stats := d.model.Service.GetFaultStats()
	out := map[string]int64{}
	maint := d.maintenanceRule()
	for i, r := range rules {
		if r.MethodName == maint.MethodName && r.ObjectType == maint.ObjectType && r.Probability == maint.Probability && r.FaultType == maint.FaultType {
			continue // the simulator's own rule, not an injected fault
		}
		if n, ok := stats[fmt.Sprintf("rule_%d_count", i)].(int64); ok {
			out[r.MethodName] += n
		}
	}
	return out
}

// ClearFaults removes every fault added with AddFault. The built-in rule that
// keeps a host with running VMs out of maintenance mode stays.
func (d *Datacenter) ClearFaults() {
	d.model.Service.ClearFaultRules()
	d.model.Service.AddFaultRule(d.maintenanceRule())
}

// taskDelayMu serializes writers of simulator.TaskDelay, which vcsim keeps in
// a package variable shared by every simulator in the process.
var taskDelayMu sync.Mutex

// SetTaskDelay slows every task of the given kind, e.g. "CreateVm",
// "RelocateVm", "CloneVm", "PowerOn" (vcsim's task names, not the *_Task
// method names), so tests can observe work in flight. A zero d removes the
// delay. The entity stays locked while the task waits, as a real vCenter
// serializes tasks on one object.
//
// vcsim keeps task delays process-wide: they affect every simulated datacenter
// in the process until this Datacenter is closed (Close removes the delays it
// set). Tests that use it must not run in parallel with tests that time tasks.
func (d *Datacenter) SetTaskDelay(method string, delay time.Duration) error {
	if method == "" {
		return errors.New("sim task delay: method: required (a task name such as CreateVm)")
	}
	if delay < 0 {
		return fmt.Errorf("sim task delay: %s: delay %v is negative", method, delay)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("sim task delay: datacenter is closed")
	}
	setTaskDelay(method, int(delay/time.Millisecond))
	if delay == 0 {
		delete(d.taskDelays, method)
	} else {
		d.taskDelays[method] = struct{}{}
	}
	return nil
}

// setTaskDelay replaces the delay map rather than writing into it: running
// tasks read the old map without a lock, and a concurrent map write would
// crash the process.
func setTaskDelay(method string, ms int) {
	taskDelayMu.Lock()
	defer taskDelayMu.Unlock()
	next := maps.Clone(simulator.TaskDelay.MethodDelay)
	if next == nil {
		next = map[string]int{}
	}
	if ms == 0 {
		delete(next, method)
	} else {
		next[method] = ms
	}
	simulator.TaskDelay.MethodDelay = next
}
