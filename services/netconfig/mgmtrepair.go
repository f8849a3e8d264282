package netconfig

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/lease"
	"github.com/podvisor/podvisor/shared/record"
)

// Management port repair through a cloned port.
//
// A host's management VMkernel NIC uses a distributed port of its own on
// the all-hosts switch. Changing that one port (its VLAN, or blocking it)
// cuts that host alone off its management network: vCenter reports it not
// responding, and nothing can be changed on it through its own port. The
// network-wide rollback does not apply (no network version changed), and
// must not: every other host is fine.
//
// Every Config.ManagementInterval the service reads the management ports
// and the hosts' connection states. For a connected host it remembers the
// port's configuration as the last good one. For a host not responding
// whose port differs from its last good configuration (or, when the service
// never saw it working, from the configuration the connected hosts' ports
// share), it repairs that host alone:
//
//  1. adds a clone of the port, scoped to the host, with the last good
//     configuration: an alternate management channel
//     (network.management.cloned, reason ManagementPortMisconfigured);
//  2. waits up to Config.ProbeWindow for the host to respond through it
//     (else removes the clone: network.management.failed, CloneUnreachable);
//  3. gives the original port the last good configuration and removes the
//     clone, then watches the host for the probe window
//     (network.management.repaired, ManagementPortRepaired; or failed,
//     RepairFailed, keeping the clone while the host needs it).
//
// A host cut off for another reason (a failed host, a network on the
// management VLAN) has an unchanged port and is left to the other
// mechanisms. A clone left by an interrupted repair is finished on the next
// pass: the port is repaired if it still differs, then the clone goes.
// What was learnt is kept in memory and in KV (mgmtrepair_store.go), so a
// replica that takes over repairs with what its predecessor learnt; only
// for a host nobody saw work does the connected hosts' common configuration
// stand in.
//
// One replica repairs at a time: the loop runs under a lease in the same
// bucket (mgmtLeaseKey), and each change to a port is fenced by it, so two
// replicas never clone or rewrite one host's port at once, and a replica
// that was paused and replaced stops before its next change.

// Reasons of the network.management.* events.
const (
	ReasonManagementPortMisconfigured = "ManagementPortMisconfigured"
	ReasonManagementPortRepaired      = "ManagementPortRepaired"
	ReasonCloneUnreachable            = "CloneUnreachable"
	ReasonRepairFailed                = "RepairFailed"
)

// mgmtState is what the repair loop knows of the management ports.
type mgmtState struct {
	once sync.Once
	mu   sync.Mutex
	// good is each host's last good port configuration, by host name.
	good map[string]fabric.PortConfig
	// seen is the configuration each connected host has had since when: it
	// becomes the good one after a probe window, since vCenter notices a
	// host it lost only after a while, and a change read right after it
	// was made must not count as good.
	seen map[string]seenConfig
	// busy names the hosts being repaired.
	busy map[string]bool
	// records is the memory in KV, once declared (mgmtRecords).
	records *record.Store[mgmtGood]
	// lease makes this replica the one that repairs (managementLoop).
	lease *lease.Lease
}

type seenConfig struct {
	cfg   fabric.PortConfig
	since time.Time
}

// managementPace bounds the share of time the management checks take: one
// check reads every host and every management port, seconds of vCenter
// work at thousands of hosts, so the wait after a check is at least this
// many times its duration (as the scheduler paces its full inventory
// reads), and the checks take at most a tenth of the time whatever the
// number of hosts.
const managementPace = 10

// managementLoop checks the management ports every ManagementInterval (or
// less often, see managementPace)
// while this replica holds the repair lease. Until the bucket that holds
// the lease and the memory can be declared, nothing is repaired: repairing
// without the lease could race another replica on the same port.
func (s *Service) managementLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ManagementInterval)
	defer t.Stop()
	var st *record.Store[mgmtGood]
	for st = s.mgmtRecords(ctx); st == nil; st = s.mgmtRecords(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	s.mgmt.mu.Lock()
	s.mgmt.lease = &lease.Lease{KV: st.KV(), Key: mgmtLeaseKey, Logger: s.log}
	l := s.mgmt.lease
	s.mgmt.mu.Unlock()
	err := l.Run(ctx, func(ctx context.Context) error {
		var wg sync.WaitGroup
		defer wg.Wait()
		wait := s.cfg.ManagementInterval
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			start := time.Now()
			if err := s.checkManagement(ctx, &wg); err != nil && ctx.Err() == nil {
				s.log.Warn("check management ports", "err", err)
			}
			wait = max(s.cfg.ManagementInterval, managementPace*time.Since(start))
		}
	})
	if err != nil && ctx.Err() == nil {
		s.log.Error("management repair stopped", "err", err)
	}
}

// fence proves this replica still holds the repair lease right before it
// changes a port.
func (s *Service) fence(ctx context.Context) error {
	s.mgmt.mu.Lock()
	l := s.mgmt.lease
	s.mgmt.mu.Unlock()
	if l == nil {
		return errors.New("management repair: no lease")
	}
	return l.Fence(ctx)
}

// checkManagement reads the ports and the hosts once, learns the good
// configurations and starts a repair for each host cut off by its port.
func (s *Service) checkManagement(ctx context.Context, wg *sync.WaitGroup) error {
	s.mgmt.once.Do(func() {
		s.mgmt.good, s.mgmt.seen, s.mgmt.busy = map[string]fabric.PortConfig{}, map[string]seenConfig{}, map[string]bool{}
	})
	ports, err := s.fab.ManagementPorts(ctx, s.cfg.AllHostsSwitch)
	if errors.Is(err, fabric.ErrSwitchNotFound) || (err == nil && len(ports) == 0) {
		return nil // no management ports on the switch: nothing to watch
	}
	if err != nil {
		return err
	}
	hosts, err := s.fab.Hosts(ctx)
	if err != nil {
		return err
	}
	byRef := map[string]fabric.Host{}
	for _, h := range hosts {
		byRef[h.Ref.Value] = h
	}
	primary := map[string]fabric.ManagementPort{}
	clones := map[string]fabric.ManagementPort{}
	common := map[fabric.PortConfig]int{}
	for _, p := range ports {
		h, ok := byRef[p.Host.Value]
		if !ok {
			continue
		}
		if p.Clone {
			clones[h.Name] = p
			continue
		}
		primary[h.Name] = p
		if h.ConnectionState == fabric.Connected {
			common[p.Config]++
		}
	}
	shared, votes := fabric.PortConfig{}, 0
	for c, n := range common {
		if n > votes {
			shared, votes = c, n
		}
	}

	st := &s.mgmt
	// A host cut off that this process never saw working may have been
	// learnt by another replica, or before a restart.
	st.mu.Lock()
	var unknown []string
	for name, p := range primary {
		_, hasClone := clones[name]
		if _, known := st.good[name]; !known && (byRef[p.Host.Value].ConnectionState != fabric.Connected || hasClone) {
			unknown = append(unknown, name)
		}
	}
	st.mu.Unlock()
	recalled := map[string]fabric.PortConfig{}
	for _, name := range unknown {
		c, ok, err := s.recallGood(ctx, name)
		if err != nil {
			s.log.Warn("management repair: recall the last good port", "host", name, "err", err)
		}
		if ok {
			recalled[name] = c
		}
	}

	var learnt []string
	st.mu.Lock()
	defer func() {
		good := map[string]fabric.PortConfig{}
		for _, name := range learnt {
			good[name] = st.good[name]
		}
		st.mu.Unlock()
		for name, c := range good {
			if err := s.rememberGood(ctx, name, c); err != nil {
				s.log.Warn("management repair", "err", err)
			}
		}
	}()
	for name, p := range primary {
		h := byRef[p.Host.Value]
		_, hasClone := clones[name]
		if h.ConnectionState == fabric.Connected && !hasClone {
			if prev, ok := st.seen[name]; !ok || prev.cfg != p.Config {
				st.seen[name] = seenConfig{cfg: p.Config, since: time.Now()}
			} else if old, known := st.good[name]; time.Since(prev.since) >= s.cfg.ProbeWindow && (!known || old != p.Config) {
				st.good[name] = p.Config
				learnt = append(learnt, name)
			}
			continue
		}
		delete(st.seen, name)
		if st.busy[name] || h.ConnectionState == fabric.Disconnected {
			continue // being repaired; or disconnected on purpose
		}
		good, known := st.good[name]
		if c, ok := recalled[name]; !known && ok {
			good, known = c, true
			st.good[name] = c
		}
		if !known {
			if votes == 0 {
				continue
			}
			good = shared
		}
		if p.Config == good && !hasClone {
			continue // cut off by something else than its port
		}
		st.busy[name] = true
		clone, resume := clones[name]
		wg.Go(func() {
			defer func() {
				st.mu.Lock()
				delete(st.busy, name)
				st.mu.Unlock()
			}()
			s.repairManagement(ctx, h, p, good, clone, resume)
		})
	}
	return nil
}

// repairManagement repairs one host's management port through a clone (a
// clone already there is reused: an interrupted repair resumes).
func (s *Service) repairManagement(ctx context.Context, h fabric.Host, p fabric.ManagementPort, good fabric.PortConfig, clone fabric.ManagementPort, resume bool) {
	ctx, sp := span(ctx, "netconfig repair management port", attribute.String("host", h.Name), attribute.String("port", p.Key))
	var err error
	defer func() { end(sp, err) }()
	sw := s.cfg.AllHostsSwitch
	ev := events.ManagementPortRepair{
		Host: h.Name, Switch: sw, Port: p.Key, Clone: p.Key + "-clone",
		Found: mgmtConfig(p.Config), LastGood: mgmtConfig(good),
	}
	emit := func(payload events.Payload) {
		if e := s.out.Emit(ctx, nil, payload); e != nil {
			s.log.Warn("publish management port repair", "host", h.Name, "err", e)
		}
	}
	fail := func(reason, format string, args ...any) {
		ev.Reason, ev.Message = reason, fmt.Sprintf(format, args...)
		err = errors.New(ev.Message)
		s.log.Warn("management port repair failed", "host", h.Name, "port", p.Key, "reason", reason, "message", ev.Message)
		emit(&events.NetworkManagementFailed{ManagementPortRepair: ev})
	}
	// fenced is called right before each change to the switch: a replica
	// that lost the repair lease stops there, leaving the port and any
	// clone to the replica that holds it now (it resumes from the clone).
	fenced := func() bool {
		if e := s.fence(ctx); e != nil {
			err = e
			s.log.Warn("management port repair stopped: this replica no longer holds the repair lease", "host", h.Name, "err", e)
			return false
		}
		return true
	}

	if resume {
		ev.Clone = clone.Key
		if clone.Config != good {
			if !fenced() {
				return
			}
			if e := s.fab.ConfigurePort(ctx, sw, clone.Key, good); e != nil {
				fail(ReasonRepairFailed, "give clone %s of host %s the last good configuration (%s): %v", clone.Key, h.Name, good, e)
				return
			}
		}
	} else {
		if !fenced() {
			return
		}
		desc := fmt.Sprintf("alternate management channel of %s while port %s is repaired", h.Name, p.Key)
		if e := s.fab.AddPort(ctx, sw, ev.Clone, fabric.ClonePortName(p.Name), desc, h.Ref, good); e != nil {
			fail(ReasonRepairFailed, "clone port %s of host %s: %v", p.Key, h.Name, e)
			return
		}
		ev.Reason = ReasonManagementPortMisconfigured
		ev.Message = fmt.Sprintf("port %s of host %s has %s, last good %s: cloned as %s with the last good configuration",
			p.Key, h.Name, p.Config, good, ev.Clone)
		s.log.Warn("host cut off by its management port; cloning it", "host", h.Name, "port", p.Key, "found", p.Config.String(), "good", good.String())
		emit(&events.NetworkManagementCloned{ManagementPortRepair: ev})
	}

	if !s.awaitConnected(ctx, h) {
		if !fenced() {
			return
		}
		if e := s.fab.RemovePort(ctx, sw, ev.Clone); e != nil {
			s.log.Warn("remove clone", "host", h.Name, "clone", ev.Clone, "err", e)
		}
		fail(ReasonCloneUnreachable, "host %s did not respond through clone %s within %s; clone removed", h.Name, ev.Clone, s.cfg.ProbeWindow)
		return
	}
	if !fenced() {
		return
	}
	if p.Config != good {
		if e := s.fab.ConfigurePort(ctx, sw, p.Key, good); e != nil {
			fail(ReasonRepairFailed, "set port %s of host %s back to %s: %v; clone %s kept as its management channel", p.Key, h.Name, good, e, ev.Clone)
			return
		}
	}
	if e := s.fab.RemovePort(ctx, sw, ev.Clone); e != nil {
		fail(ReasonRepairFailed, "remove clone %s of host %s: %v", ev.Clone, h.Name, e)
		return
	}
	lost, e := s.probe(ctx, []fabric.Host{h})
	switch {
	case e != nil:
		err = e
		return
	case len(lost) > 0:
		fail(ReasonRepairFailed, "host %s stopped responding once clone %s was removed: port %s does not carry its management traffic with %s",
			h.Name, ev.Clone, p.Key, good)
		return
	}
	ev.Reason = ReasonManagementPortRepaired
	ev.Message = fmt.Sprintf("host %s reached through clone %s; port %s set back to %s (was %s); clone removed", h.Name, ev.Clone, p.Key, good, p.Config)
	s.log.Info("management port repaired", "host", h.Name, "port", p.Key, "config", good.String())
	s.mgmt.mu.Lock()
	s.mgmt.good[h.Name] = good
	s.mgmt.mu.Unlock()
	if e := s.rememberGood(ctx, h.Name, good); e != nil {
		s.log.Warn("management repair", "err", e)
	}
	emit(&events.NetworkManagementRepaired{ManagementPortRepair: ev})
}

// awaitConnected waits up to the probe window for a host to respond.
func (s *Service) awaitConnected(ctx context.Context, h fabric.Host) bool {
	deadline := time.Now().Add(max(s.cfg.ProbeWindow, s.cfg.ProbeInterval))
	for {
		state, err := s.fab.HostConnection(ctx, h.Ref)
		if err == nil && state == fabric.Connected {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(s.cfg.ProbeInterval):
		}
	}
}

func mgmtConfig(c fabric.PortConfig) events.ManagementPortConfig {
	return events.ManagementPortConfig{VLAN: int(c.VLAN), Blocked: c.Blocked}
}
