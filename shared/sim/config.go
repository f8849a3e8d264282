package sim

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/podvisor/podvisor/shared/sim/guest"
)

// Defaults used when a Config field is left at its zero value.
const (
	DefaultClusters        = 2
	DefaultHostsPerCluster = 8
	DefaultUsername        = "podvisor"
	DefaultPassword        = "podvisor"
	DefaultAddr            = "127.0.0.1:0"

	// MaxClusters and MaxHostsPerCluster bound a simulated datacenter. 96 hosts is
	// vSphere 8's cluster maximum; the cluster bound allows a scale run of
	// 5,000 hosts (313 clusters of 16; about 7 ms of the simulator's CPU per
	// host to build) and keeps a typo from building a hundred thousand.
	MaxClusters        = 640
	MaxHostsPerCluster = 96
)

// Config sizes and secures a simulated datacenter. The zero value is valid and
// gives the default 2 clusters x 8 hosts on a random loopback port.
type Config struct {
	// Clusters is the number of clusters, named cluster-1, cluster-2, ... (default 2).
	Clusters int
	// HostsPerCluster is the number of hosts in every cluster (default 8).
	HostsPerCluster int
	// Username and Password are the only credentials the simulator accepts
	// (default podvisor/podvisor); a wrong pair gets "Login failure" like vCenter.
	Username string
	Password string
	// Addr is the listen address of the SOAP endpoint (default 127.0.0.1:0, a
	// random loopback port).
	Addr string
	// TLS, when set, serves the endpoint over HTTPS with this configuration's
	// certificate (clients then verify it as they would vCenter's).
	TLS *tls.Config
	// Seed chooses the host hardware. The same seed gives the same hardware on
	// every run, so a failing scheduling test can be replayed.
	Seed int64
	// Dir is where the datastore backing directories are created (default: the
	// system temp dir). A fresh subdirectory is made and removed by Close,
	// unless KeepData is set.
	Dir string
	// KeepData puts the datastores directly in Dir (one directory each, reused
	// when it exists) and leaves them on Close, so that what was stored on
	// them (image disks, layer files) outlives the simulator: a restarted
	// `podvisor up` finds its image chains where the records say they are.
	KeepData bool
	// Guests, when set, runs a guest for every powered-on pod VM (package
	// guest): its agent as PID 1 of its own namespaces, in a cgroup sized
	// to the VM, with the VM's disk files as its devices. Guest.Dir
	// defaults to a "guests" directory beside the datastores. When this
	// machine cannot run guests (not root, no agent binary), the
	// datacenter runs without them and GuestsOff says why, unless
	// GuestsRequired, which makes Start fail instead.
	Guests         *guest.Config
	GuestsRequired bool
	// PortGroups are created on the pv-dvs switch at start, before any caller
	// can see the inventory. It is the extension point for networks the
	// simulated site must already have, such as a management port group.
	PortGroups []PortGroupSpec
}

// PortGroupSpec describes a port group created on pv-dvs at start.
type PortGroupSpec struct {
	Name string
	// VLAN is the access VLAN id, 0 for none.
	VLAN int32
	// Ports is the number of ports (default 128).
	Ports int32
}

func (c Config) withDefaults() Config {
	if c.Clusters == 0 {
		c.Clusters = DefaultClusters
	}
	if c.HostsPerCluster == 0 {
		c.HostsPerCluster = DefaultHostsPerCluster
	}
	if c.Username == "" && c.Password == "" {
		c.Username, c.Password = DefaultUsername, DefaultPassword
	}
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	for i := range c.PortGroups {
		if c.PortGroups[i].Ports == 0 {
			c.PortGroups[i].Ports = 128
		}
	}
	return c
}

// Validate reports every invalid field of a Config (after defaults), each
// error naming the field and the reason.
func (c Config) Validate() error {
	var errs []error
	if c.Clusters < 1 || c.Clusters > MaxClusters {
		errs = append(errs, fmt.Errorf("sim config: Clusters: %d is out of range 1..%d", c.Clusters, MaxClusters))
	}
	if c.HostsPerCluster < 1 || c.HostsPerCluster > MaxHostsPerCluster {
		errs = append(errs, fmt.Errorf("sim config: HostsPerCluster: %d is out of range 1..%d", c.HostsPerCluster, MaxHostsPerCluster))
	}
	if c.Username == "" {
		errs = append(errs, errors.New("sim config: Username: required when Password is set"))
	}
	if c.Password == "" {
		errs = append(errs, errors.New("sim config: Password: required when Username is set (the simulator never accepts an empty password)"))
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("sim config: Addr: %q is not host:port: %v", c.Addr, err))
	}
	if fi, err := os.Stat(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("sim config: Dir: %v", err))
	} else if !fi.IsDir() {
		errs = append(errs, fmt.Errorf("sim config: Dir: %s is not a directory", c.Dir))
	}
	seen := map[string]bool{DVSName: true, DefaultNetwork: true}
	for i, pg := range c.PortGroups {
		switch {
		case pg.Name == "":
			errs = append(errs, fmt.Errorf("sim config: PortGroups[%d].Name: required", i))
		case len(pg.Name) > 80:
			errs = append(errs, fmt.Errorf("sim config: PortGroups[%d].Name: %q is longer than 80 characters", i, pg.Name))
		case seen[pg.Name]:
			errs = append(errs, fmt.Errorf("sim config: PortGroups[%d].Name: %q is already used in the datacenter", i, pg.Name))
		}
		seen[pg.Name] = true
		if pg.VLAN < 0 || pg.VLAN > 4094 {
			errs = append(errs, fmt.Errorf("sim config: PortGroups[%d].VLAN: %d is out of range 0..4094", i, pg.VLAN))
		}
		if pg.Ports < 1 {
			errs = append(errs, fmt.Errorf("sim config: PortGroups[%d].Ports: must be positive", i))
		}
	}
	return errors.Join(errs...)
}
