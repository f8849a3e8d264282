package events

import (
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Host connection states, as vSphere reports them (HostSystemConnectionState).
const (
	HostConnected     = "connected"
	HostDisconnected  = "disconnected"
	HostNotResponding = "notResponding"
)

// HostInfo is what the scheduler's inventory knows about a host.
type HostInfo struct {
	// Name is the host's name in vCenter.
	Name string `json:"name"`
	// Cluster is the compute cluster the host belongs to.
	Cluster string `json:"cluster"`
	// CPUCores is the number of physical cores.
	CPUCores int32 `json:"cpuCores"`
	// CPUMHz is the speed of one core; capacity in millicores is
	// CPUCores*1000 (one pod vCPU is one core, whatever its speed).
	CPUMHz int32 `json:"cpuMHz"`
	// MemoryBytes is the host's physical memory.
	MemoryBytes int64 `json:"memoryBytes"`
	// ConnectionState is connected, disconnected or notResponding.
	ConnectionState string `json:"connectionState"`
	// Maintenance is true while the host is in maintenance mode.
	Maintenance bool `json:"maintenance,omitempty"`
	// Cordoned is true while podvisor places no new pods on the host.
	Cordoned bool `json:"cordoned,omitempty"`
	// Datastores mounted on the host.
	Datastores []string `json:"datastores,omitempty"`
	// Networks (port group names) the host is connected to.
	Networks []string `json:"networks,omitempty"`
	// Labels are the host's labels, which pod nodeSelectors are matched
	// against (Kubernetes label syntax; the inventory decides where they
	// come from, for example vSphere tags).
	Labels map[string]string `json:"labels,omitempty"`
}

func (h *HostInfo) validate(p *field.Path) field.ErrorList {
	errs := validateHostName(p.Child("name"), h.Name)
	errs = append(errs, validateObjectName(p.Child("cluster"), h.Cluster)...)
	errs = append(errs, validateNonNegative(p.Child("cpuCores"), int64(h.CPUCores))...)
	errs = append(errs, validateNonNegative(p.Child("cpuMHz"), int64(h.CPUMHz))...)
	errs = append(errs, validateNonNegative(p.Child("memoryBytes"), h.MemoryBytes)...)
	switch h.ConnectionState {
	case HostConnected, HostDisconnected, HostNotResponding:
	default:
		errs = append(errs, field.NotSupported(p.Child("connectionState"), h.ConnectionState, []string{HostConnected, HostDisconnected, HostNotResponding}))
	}
	errs = append(errs, validateNames(p.Child("datastores"), h.Datastores, validateObjectName)...)
	errs = append(errs, validateNames(p.Child("networks"), h.Networks, validateObjectName)...)
	errs = append(errs, validateLabels(p.Child("labels"), h.Labels)...)
	return errs
}

// validateLabels applies the Kubernetes label rules.
func validateLabels(p *field.Path, labels map[string]string) field.ErrorList {
	var errs field.ErrorList
	for _, k := range sortedKeys(labels) {
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, field.Invalid(p, k, msg))
		}
		for _, msg := range validation.IsValidLabelValue(labels[k]) {
			errs = append(errs, field.Invalid(p.Key(k), labels[k], msg))
		}
	}
	return errs
}

// HostDiscovered says the inventory found a host it did not know.
type HostDiscovered struct {
	// Host as first seen.
	Host HostInfo `json:"host"`
}

// Validate checks the host.
func (e *HostDiscovered) Validate() error { return asError(e.Host.validate(field.NewPath("host"))) }

// ObjectKey is the host name.
func (e *HostDiscovered) ObjectKey() string { return e.Host.Name }

// HostUpdated says something the scheduler cares about changed on a host
// (capacity, state, datastores, networks, labels). It carries the full state,
// not a diff, so a consumer that missed an update converges anyway.
type HostUpdated struct {
	// Host is the new full state.
	Host HostInfo `json:"host"`
}

// Validate checks the host.
func (e *HostUpdated) Validate() error { return asError(e.Host.validate(field.NewPath("host"))) }

// ObjectKey is the host name.
func (e *HostUpdated) ObjectKey() string { return e.Host.Name }

// HostLost says a host stopped responding; its pods are evicted and restarted
// elsewhere.
type HostLost struct {
	// Name of the host.
	Name string `json:"name"`
	// Cluster of the host.
	Cluster string `json:"cluster"`
	// Reason is a CamelCase word: NotResponding, Disconnected, Removed.
	Reason string `json:"reason"`
}

// Validate checks the host and reason.
func (e *HostLost) Validate() error {
	errs := validateHostName(field.NewPath("name"), e.Name)
	errs = append(errs, validateObjectName(field.NewPath("cluster"), e.Cluster)...)
	errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	return asError(errs)
}

// ObjectKey is the host name.
func (e *HostLost) ObjectKey() string { return e.Name }

// HostRecovered says a lost host is connected again and schedulable (unless
// cordoned).
type HostRecovered struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
}

// Validate checks the host.
func (e *HostRecovered) Validate() error {
	errs := validateHostName(field.NewPath("name"), e.Name)
	errs = append(errs, validateObjectName(field.NewPath("cluster"), e.Cluster)...)
	return asError(errs)
}

// ObjectKey is the host name.
func (e *HostRecovered) ObjectKey() string { return e.Name }

// HostCordoned says no new pods (or migrations) may target the host.
type HostCordoned struct {
	Name string `json:"name"`
	// Reason is a CamelCase word: Drain, Manual, ...
	Reason string `json:"reason"`
}

// Validate checks the host and reason.
func (e *HostCordoned) Validate() error {
	errs := validateHostName(field.NewPath("name"), e.Name)
	errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	return asError(errs)
}

// ObjectKey is the host name.
func (e *HostCordoned) ObjectKey() string { return e.Name }

// HostUncordoned makes a cordoned host schedulable again (and takes it out of
// maintenance mode if a drain put it there).
type HostUncordoned struct {
	Name string `json:"name"`
}

// Validate checks the host.
func (e *HostUncordoned) Validate() error {
	return asError(validateHostName(field.NewPath("name"), e.Name))
}

// ObjectKey is the host name.
func (e *HostUncordoned) ObjectKey() string { return e.Name }

// HostCordonRequested asks the migration service (which owns cordons, as
// part of drains) to cordon a host: it answers host.cordoned. Clients
// request; only podvisor says a host is cordoned.
type HostCordonRequested struct {
	Name string `json:"name"`
	// Reason is a CamelCase word carried into host.cordoned (default
	// Manual).
	Reason string `json:"reason,omitempty"`
}

// Validate checks the host and reason.
func (e *HostCordonRequested) Validate() error {
	errs := validateHostName(field.NewPath("name"), e.Name)
	if e.Reason != "" {
		errs = append(errs, validateReason(field.NewPath("reason"), e.Reason)...)
	}
	return asError(errs)
}

// ObjectKey is the host name.
func (e *HostCordonRequested) ObjectKey() string { return e.Name }

// HostUncordonRequested asks the migration service to uncordon a host: stop
// a drain still running, take the host out of maintenance mode, then
// announce host.uncordoned.
type HostUncordonRequested struct {
	Name string `json:"name"`
}

// Validate checks the host.
func (e *HostUncordonRequested) Validate() error {
	return asError(validateHostName(field.NewPath("name"), e.Name))
}

// ObjectKey is the host name.
func (e *HostUncordonRequested) ObjectKey() string { return e.Name }

// HostDrainRequested asks the migration service to empty a host: cordon,
// migrate every pod away, enter maintenance mode.
type HostDrainRequested struct {
	Name string `json:"name"`
}

// Validate checks the host.
func (e *HostDrainRequested) Validate() error {
	return asError(validateHostName(field.NewPath("name"), e.Name))
}

// ObjectKey is the host name.
func (e *HostDrainRequested) ObjectKey() string { return e.Name }

// UnmovablePod is a pod a drain could not migrate.
type UnmovablePod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// Reason is a CamelCase word: NoTarget, MigrationFailed, ...
	Reason string `json:"reason"`
	// Message explains for a person.
	Message string `json:"message,omitempty"`
}

// HostDrained says a drain finished: Migrated pods moved away, Unmovable ones
// stayed (the host enters maintenance mode only when none stayed).
type HostDrained struct {
	Name string `json:"name"`
	// Migrated is the number of pods moved to other hosts.
	Migrated int `json:"migrated"`
	// MigratedVMs is the number of native VMs moved to other hosts.
	MigratedVMs int `json:"migratedVMs,omitempty"`
	// Unmovable lists the pods and native VMs left on the host and why.
	Unmovable []UnmovablePod `json:"unmovable,omitempty"`
}

// Validate checks the host and the unmovable pods.
func (e *HostDrained) Validate() error {
	errs := validateHostName(field.NewPath("name"), e.Name)
	errs = append(errs, validateNonNegative(field.NewPath("migrated"), int64(e.Migrated))...)
	errs = append(errs, validateNonNegative(field.NewPath("migratedVMs"), int64(e.MigratedVMs))...)
	for i, u := range e.Unmovable {
		p := field.NewPath("unmovable").Index(i)
		errs = append(errs, validateDNSLabel(p.Child("namespace"), u.Namespace)...)
		errs = append(errs, validateDNSSubdomain(p.Child("name"), u.Name)...)
		errs = append(errs, validateToken(p.Child("uid"), u.UID, false)...)
		errs = append(errs, validateReason(p.Child("reason"), u.Reason)...)
	}
	return asError(errs)
}

// ObjectKey is the host name.
func (e *HostDrained) ObjectKey() string { return e.Name }
