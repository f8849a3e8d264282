package events

import (
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Management port repair. When one host stops responding because its own
// management port was misconfigured (its VLAN or block changed, not a
// network's port group), network-config adds a clone of the port with the
// port's last good configuration, scoped to that host: an alternate
// management channel. Once the host responds through the clone, the
// original port gets the last good configuration back and the clone is
// removed. Only that host's port is touched, unlike a network rollback.
// Each step is an event: network.management.cloned, then
// network.management.repaired or network.management.failed.

// ManagementPortConfig is the part of a port's configuration that decides
// whether management traffic flows.
type ManagementPortConfig struct {
	// VLAN is the port's access VLAN (0: none).
	VLAN int `json:"vlan"`
	// Blocked: the port passes no traffic.
	Blocked bool `json:"blocked,omitempty"`
}

// ManagementPortRepair is what every event of one repair carries.
type ManagementPortRepair struct {
	// Host whose management port is repaired.
	Host string `json:"host"`
	// Switch the ports are on.
	Switch string `json:"switch"`
	// Port is the key of the host's management port.
	Port string `json:"port"`
	// Clone is the key of the clone (the alternate management channel).
	Clone string `json:"clone,omitempty"`
	// Found is the port's configuration that cut the host off.
	Found ManagementPortConfig `json:"found"`
	// LastGood is the configuration the host last worked with: the
	// clone's, and the port's once repaired.
	LastGood ManagementPortConfig `json:"lastGood"`
	// Reason is a CamelCase word; Message explains it for a person.
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *ManagementPortRepair) validate() field.ErrorList {
	errs := validateHostName(field.NewPath("host"), e.Host)
	errs = append(errs, validateObjectName(field.NewPath("switch"), e.Switch)...)
	errs = append(errs, required(field.NewPath("port"), e.Port)...)
	for _, c := range []struct {
		p    *field.Path
		vlan int
	}{{field.NewPath("found", "vlan"), e.Found.VLAN}, {field.NewPath("lastGood", "vlan"), e.LastGood.VLAN}} {
		if c.vlan < 0 || c.vlan > MaxVLAN {
			errs = append(errs, field.Invalid(c.p, c.vlan, "must be between 0 and 4094"))
		}
	}
	errs = append(errs, validateFailure(e.Reason, e.Message)...)
	return errs
}

// NetworkManagementCloned: the clone exists with the last good
// configuration (reason ManagementPortMisconfigured).
type NetworkManagementCloned struct {
	ManagementPortRepair `json:",inline"`
}

// Validate checks the fields; the clone is required.
func (e *NetworkManagementCloned) Validate() error {
	errs := e.validate()
	errs = append(errs, required(field.NewPath("clone"), e.Clone)...)
	return asError(errs)
}

// ObjectKey is the host name.
func (e *NetworkManagementCloned) ObjectKey() string { return e.Host }

// NetworkManagementRepaired: the host was reached through the clone, its
// port has the last good configuration again and the clone is gone.
type NetworkManagementRepaired struct {
	ManagementPortRepair `json:",inline"`
}

// Validate checks the fields.
func (e *NetworkManagementRepaired) Validate() error { return asError(e.validate()) }

// ObjectKey is the host name.
func (e *NetworkManagementRepaired) ObjectKey() string { return e.Host }

// NetworkManagementFailed: the repair stopped (the host did not respond
// through the clone, or vCenter refused a step); the reason says which.
type NetworkManagementFailed struct {
	ManagementPortRepair `json:",inline"`
}

// Validate checks the fields.
func (e *NetworkManagementFailed) Validate() error { return asError(e.validate()) }

// ObjectKey is the host name.
func (e *NetworkManagementFailed) ObjectKey() string { return e.Host }
