package sim

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim/guest"
	"github.com/podvisor/podvisor/shared/sim/segment"

	// Endpoints beyond the SOAP API that services use: vAPI (tags, content
	// library) and vslm (first class disks).
	_ "github.com/vmware/govmomi/vapi/simulator"
	_ "github.com/vmware/govmomi/vslm/simulator"
)

// DatacenterName is the name of the simulated datacenter.
const DatacenterName = "DC0"

// ErrNotFound is returned (wrapped) for a host or datastore name that the
// simulated datacenter does not have.
var ErrNotFound = errors.New("not found")

// Datacenter is a running simulated vCenter with one datacenter. It is safe
// for concurrent use.
type Datacenter struct {
	cfg    Config
	model  *simulator.Model
	server *simulator.Server
	dir    string
	url    *url.URL

	hosts      []HostSpec
	hostIndex  map[string]int
	hostByRef  map[types.ManagedObjectReference]int
	clusters   []ClusterSpec
	datastores []DatastoreSpec
	dvs        types.ManagedObjectReference

	// guests runs the guests of powered-on pod VMs; nil when off, and
	// guestsOff says why.
	guests    *guest.Manager
	guestsOff string
	// fabric holds the network segments of the guests' NICs (see
	// segments.go); nil when guests are off.
	fabric *segment.Fabric
	segMu  sync.Mutex
	// agentSegments holds, for hosts whose host agent owns their
	// segments (HostSegments), the port group keys the agent made the
	// host carry; reconcileSegments leaves those hosts to it.
	agentSegments map[string]map[string]bool
	// lastMembership is what switch membership made each host carry at
	// the last reconcile: where an agent-owned host starts from.
	lastMembership map[string]map[string]bool
	// services are the hosts' service addresses on segments (services.go).
	services map[serviceKey]*sharedService

	// forks maps an instant clone's key to its parent's (instantclone.go).
	forkMu sync.Mutex
	forks  map[string]string
	// standbyOf maps an instant clone being powered on to the standby
	// guest it takes over; refilling marks the parents whose next standby
	// is being booted (standby.go).
	standbyOf map[string]string
	refilling map[string]bool
	// reconfiguring holds the VMs whose guest follows a reconfigure now
	// (guests.go).
	reconfiguring map[string]*reconfigurePass
	// tasks wakes the datacenter's own waits for tasks (tasks.go);
	// inproc is its client of the model, made once (instantclone.go).
	tasks      taskWatch
	inprocOnce sync.Once
	inproc     *vim25.Client
	inprocErr  error
	// calls counts the SOAP calls served, by method (calls.go).
	calls callCounter

	mu         sync.Mutex
	closed     bool
	taskDelays map[string]struct{}

	// stateMu guards the reasons a host does not respond: failed by
	// FailHost, cut off by the management VLAN rule.
	stateMu  sync.Mutex
	failed   map[types.ManagedObjectReference]bool
	cut      map[types.ManagedObjectReference]bool
	mgmtVLAN int32
	// ports are the standalone distributed ports by key (mgmtport.go).
	ports   map[string]*standalonePort
	portSeq int
}

// ClusterSpec describes a cluster of the simulated datacenter.
type ClusterSpec struct {
	Name string
	Ref  types.ManagedObjectReference
	// ResourcePool is the cluster's root resource pool.
	ResourcePool types.ManagedObjectReference
	// Hosts are the host names in creation order.
	Hosts []string
}

// Start builds the datacenter and serves it. The inventory is:
//
//	DC0
//	  host/cluster-N/esx-N-MM   hosts with seeded, unequal hardware
//	  datastore/shared-ds       NFS, mounted on every host
//	  datastore/cluster-N-ds    mounted on cluster-N's hosts only
//	  network/VM Network        standard port group on every host
//	  network/pv-dvs            distributed switch, every host a member
//
// ctx bounds the construction only; the datacenter runs until Close.
func Start(ctx context.Context, cfg Config) (*Datacenter, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Datacenter{
		cfg:        cfg,
		hostIndex:  map[string]int{},
		hostByRef:  map[types.ManagedObjectReference]int{},
		taskDelays: map[string]struct{}{},
		failed:     map[types.ManagedObjectReference]bool{},
		cut:        map[types.ManagedObjectReference]bool{},
	}
	if err := d.build(ctx); err != nil {
		d.teardown()
		return nil, err
	}
	return d, nil
}

// SimulatedVersion is the vCenter version the simulated datacenter reports.
const SimulatedVersion = "8.0.3"

func (d *Datacenter) build(ctx context.Context) error {
	m := simulator.VPX()
	// Only the datacenter comes from the model: clusters, hosts, datastores and
	// the switch are created below under podvisor's names.
	m.Datacenter = 1
	m.Cluster, m.ClusterHost, m.Host = 0, 0, 0
	m.Machine, m.Datastore, m.Portgroup = 0, 0, 0
	m.Autostart = false
	// vcsim calls itself 6.5; the datacenter stands for the vCenter podvisor
	// targets, so that version checks (podvisor install) see a supported one.
	m.ServiceContent.About.Version = SimulatedVersion
	m.ServiceContent.About.FullName = "VMware vCenter Server " + SimulatedVersion + " (podvisor simulated datacenter)"
	if err := m.Create(); err != nil {
		return fmt.Errorf("sim: create model: %w", err)
	}
	d.model = m
	m.Map().AddHandler(&hostStateBridge{d: d})
	m.Map().AddHandler(&bootClock{m: m.Map()})
	m.Map().AddHandler(&d.tasks)
	m.Map().Handler = d.methodHandler
	m.Service.AddFaultRule(d.maintenanceRule())

	dir := d.cfg.Dir
	if d.cfg.KeepData {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("sim: datastore directory: %w", err)
		}
	} else {
		var err error
		if dir, err = os.MkdirTemp(d.cfg.Dir, "podvisor-sim-"); err != nil {
			return fmt.Errorf("sim: datastore directory: %w", err)
		}
		d.dir = dir // removed by Close
	}

	// Build the inventory in process, without HTTP: the API path is the same
	// one clients use, minus the encoding.
	vc, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return fmt.Errorf("sim: in-process client: %w", err)
	}
	finder := find.NewFinder(vc)
	dc, err := finder.Datacenter(ctx, DatacenterName)
	if err != nil {
		return fmt.Errorf("sim: datacenter: %w", err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		return fmt.Errorf("sim: datacenter folders: %w", err)
	}

	hostObjs, err := d.createClusters(ctx, folders.HostFolder)
	if err != nil {
		return err
	}

	planHardware(d.cfg.Seed, d.hosts)
	c := d.context(ctx)
	for _, h := range d.hosts {
		host, ok := c.Map.Get(h.Ref).(*simulator.HostSystem)
		if !ok {
			return fmt.Errorf("sim: host %s vanished after creation", h.Name)
		}
		setHardware(c, host, h)
	}
	for _, cl := range d.clusters {
		cluster, ok := c.Map.Get(cl.Ref).(*simulator.ClusterComputeResource)
		if !ok {
			return fmt.Errorf("sim: cluster %s vanished after creation", cl.Name)
		}
		refreshCluster(c, cluster)
	}

	if err := d.createDatastores(ctx, hostObjs, dir); err != nil {
		return err
	}
	if err := d.createNetworking(ctx, folders.NetworkFolder, hostObjs); err != nil {
		return err
	}
	if err := d.startGuests(dir); err != nil {
		return err
	}
	return d.serve()
}

// createClusters creates cluster-1..N with hosts esx-<cluster>-<nn>.
//
// All AddHost calls are issued before any task is waited on: vcsim runs the
// tasks of one cluster one at a time, in call order, so references and order
// are the same on every run, and the waits overlap instead of adding up.
func (d *Datacenter) createClusters(ctx context.Context, hostFolder *object.Folder) (map[string]*object.HostSystem, error) {
	width := max(2, len(strconv.Itoa(d.cfg.HostsPerCluster)))
	type pending struct {
		name, cluster string
		task          *object.Task
	}
	var tasks []pending
	for ci := 1; ci <= d.cfg.Clusters; ci++ {
		name := "cluster-" + strconv.Itoa(ci)
		cluster, err := hostFolder.CreateCluster(ctx, name, types.ClusterConfigSpecEx{})
		if err != nil {
			return nil, fmt.Errorf("sim: create %s: %w", name, err)
		}
		pool, err := cluster.ResourcePool(ctx)
		if err != nil {
			return nil, fmt.Errorf("sim: resource pool of %s: %w", name, err)
		}
		spec := ClusterSpec{Name: name, Ref: cluster.Reference(), ResourcePool: pool.Reference()}
		for hi := 1; hi <= d.cfg.HostsPerCluster; hi++ {
			hostName := fmt.Sprintf("esx-%d-%0*d", ci, width, hi)
			task, err := cluster.AddHost(ctx, types.HostConnectSpec{HostName: hostName, Force: true}, true, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("sim: add %s to %s: %w", hostName, name, err)
			}
			tasks = append(tasks, pending{hostName, name, task})
			spec.Hosts = append(spec.Hosts, hostName)
		}
		d.clusters = append(d.clusters, spec)
	}

	hostObjs := map[string]*object.HostSystem{}
	for _, p := range tasks {
		info, err := p.task.WaitForResult(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("sim: add %s to %s: %w", p.name, p.cluster, err)
		}
		ref := info.Result.(types.ManagedObjectReference)
		hostObjs[p.name] = object.NewHostSystem(hostFolder.Client(), ref)
		d.hostIndex[p.name] = len(d.hosts)
		d.hostByRef[ref] = len(d.hosts)
		d.hosts = append(d.hosts, HostSpec{Name: p.name, Cluster: p.cluster, Ref: ref})
	}
	return hostObjs, nil
}

// serve starts the SOAP endpoint. vcsim panics when it cannot listen; the
// panic happens before any goroutine starts and becomes an error here.
func (d *Datacenter) serve() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sim: listen on %s: %v", d.cfg.Addr, r)
		}
	}()
	d.model.Service.RegisterEndpoints = true
	d.model.Service.Listen = &url.URL{Host: d.cfg.Addr, User: url.UserPassword(d.cfg.Username, d.cfg.Password)}
	if d.cfg.TLS != nil {
		d.model.Service.TLS = d.cfg.TLS.Clone()
	}
	d.server = d.model.Service.NewServer()
	u := *d.server.URL
	u.User = url.UserPassword(d.cfg.Username, d.cfg.Password)
	d.url = &u
	return nil
}

// context returns a simulator context for one operation. Locks in vcsim are
// owned by a context pointer, so sharing one context between goroutines would
// let them hold the same object lock at once; each call gets its own copy.
func (d *Datacenter) context(ctx context.Context) *simulator.Context {
	c := *d.model.Service.Context
	c.Context = ctx
	return &c
}

// URL is the SOAP endpoint (http://host:port/sdk, https with Config.TLS)
// with the credentials in it,
// the form GOVC_URL takes. The caller gets its own copy.
func (d *Datacenter) URL() *url.URL {
	u := *d.url
	return &u
}

// Username and Password are the credentials the simulator accepts.
func (d *Datacenter) Username() string { return d.cfg.Username }
func (d *Datacenter) Password() string { return d.cfg.Password }

// Model is the underlying vcsim model, for what this package does not wrap.
// Change state through Model().Map().WithLock + Update so watchers see it.
func (d *Datacenter) Model() *simulator.Model { return d.model }

// Client returns a new govmomi client logged in over HTTP, as any vSphere
// client would be. The caller logs it out (or lets Close drop the session).
func (d *Datacenter) Client(ctx context.Context) (*govmomi.Client, error) {
	c, err := govmomi.NewClient(ctx, d.URL(), true)
	if err != nil {
		return nil, fmt.Errorf("sim: client for %s: %w", d.url.Redacted(), err)
	}
	return c, nil
}

// Hosts lists the hosts with their hardware, cluster by cluster.
func (d *Datacenter) Hosts() []HostSpec {
	out := make([]HostSpec, len(d.hosts))
	for i, h := range d.hosts {
		h.Datastores = append([]string(nil), h.Datastores...)
		out[i] = h
	}
	return out
}

// Host returns one host by name.
func (d *Datacenter) Host(name string) (HostSpec, error) {
	i, ok := d.hostIndex[name]
	if !ok {
		return HostSpec{}, fmt.Errorf("sim: host %q: %w", name, ErrNotFound)
	}
	h := d.hosts[i]
	h.Datastores = append([]string(nil), h.Datastores...)
	return h, nil
}

// Clusters lists the clusters in order.
func (d *Datacenter) Clusters() []ClusterSpec {
	out := make([]ClusterSpec, len(d.clusters))
	for i, c := range d.clusters {
		c.Hosts = append([]string(nil), c.Hosts...)
		out[i] = c
	}
	return out
}

// Close stops the server, removes the model and the datastore directories,
// and clears the task delays this datacenter set. It is safe to call twice.
//
// A client blocked in WaitForUpdatesEx without MaxWaitSeconds keeps vcsim's
// server from shutting down; Close waits a few seconds for it and then
// abandons the server rather than hang.
func (d *Datacenter) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	for method := range d.taskDelays {
		setTaskDelay(method, 0)
	}
	d.mu.Unlock()
	d.teardown()
}

func (d *Datacenter) teardown() {
	if d.guests != nil {
		// Before the model goes: the guests' power-off needs nothing from
		// it, but a guest must never outlive its datacenter.
		d.guests.Close()
	}
	if d.fabric != nil {
		_ = d.fabric.Close()
	}
	if d.server != nil {
		done := make(chan struct{})
		go func() {
			d.server.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			d.server.CloseClientConnections()
		}
	}
	if d.model != nil {
		d.model.Remove()
	}
	if d.dir != "" {
		_ = os.RemoveAll(d.dir)
	}
}
