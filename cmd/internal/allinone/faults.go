package allinone

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmware/govmomi/simulator"

	"github.com/podvisor/podvisor/shared/sim"
)

// FaultMethods are the vSphere calls --vcenter-faults fails: creating,
// powering on and moving a VM, the calls every pod and every migration
// depends on.
var FaultMethods = []string{"CreateVM_Task", "PowerOnVM_Task", "RelocateVM_Task"}

// FaultsFile is where up keeps the count of faults the simulator injected
// per method (JSON, rewritten every second), for a fault-injection run to
// report.
func FaultsFile(stateDir string) string { return filepath.Join(stateDir, "vcenter-faults.json") }

// injectVCenterFaults makes the simulator fail cfg.VCenterFaults of the
// FaultMethods calls with InsufficientResourcesFault, which a retry may
// outlive (as a busy vCenter's would), and keeps the counts in FaultsFile.
func (s *System) injectVCenterFaults(dc *sim.Datacenter) error {
	p := s.cfg.VCenterFaults
	if p == 0 {
		return nil
	}
	if p < 0 || p > 1 {
		return fmt.Errorf("up: --vcenter-faults %v: want a probability in (0, 1]", p)
	}
	for _, m := range FaultMethods {
		err := dc.AddFault(simulator.FaultInjectionRule{MethodName: m, Probability: p,
			FaultType: simulator.FaultTypeInsufficientResourcesFault, Message: "injected fault (podvisor up --vcenter-faults)"})
		if err != nil {
			return fmt.Errorf("up: --vcenter-faults: %w", err)
		}
	}
	s.log.Warn("the vCenter simulator injects faults", "probability", p, "methods", FaultMethods)
	stop := make(chan struct{})
	s.onClose(func() { close(stop) })
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			data, _ := json.Marshal(dc.FaultCounts())
			tmp := FaultsFile(s.cfg.StateDir) + ".tmp"
			if os.WriteFile(tmp, data, 0o640) == nil {
				_ = os.Rename(tmp, FaultsFile(s.cfg.StateDir))
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return nil
}
