package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Datastore names. Every host mounts SharedDatastore; each cluster's hosts
// also mount ClusterDatastore(cluster).
const SharedDatastore = "shared-ds"

// ClusterDatastore names the datastore mounted only on one cluster's hosts.
func ClusterDatastore(cluster string) string { return cluster + "-ds" }

const tib = int64(1) << 40

// DatastoreSpec describes a datastore of the simulated datacenter.
type DatastoreSpec struct {
	Name string
	Ref  types.ManagedObjectReference
	// Type is summary.type: "NFS" for the shared datastore, "OTHER" (vcsim's
	// local datastore) for the per-cluster ones.
	Type string
	// Cluster is empty for the shared datastore.
	Cluster string
	// Hosts are the names of the hosts that mount it.
	Hosts []string
	// CapacityBytes and FreeBytes are summary.capacity and summary.freeSpace
	// at the time of the call. Disks created on it lower the free space.
	CapacityBytes int64
	FreeBytes     int64
	// Dir is the directory on this machine that holds the datastore's files.
	Dir string
}

// createDatastores mounts the shared NFS datastore on every host and one
// local datastore per cluster on that cluster's hosts, each backed by a
// directory under dir, then gives them realistic capacity and usage.
func (d *Datacenter) createDatastores(ctx context.Context, hostObjs map[string]*object.HostSystem, dir string) error {
	rng := rand.New(rand.NewPCG(uint64(d.cfg.Seed), 0x73746f72616765)) // "storage"

	shared := DatastoreSpec{Name: SharedDatastore, Type: "NFS", Dir: filepath.Join(dir, SharedDatastore), CapacityBytes: 32 * tib}
	if err := os.MkdirAll(shared.Dir, 0o700); err != nil {
		return fmt.Errorf("sim: datastore %s: %w", shared.Name, err)
	}
	for _, h := range d.hosts {
		dss, err := hostObjs[h.Name].ConfigManager().DatastoreSystem(ctx)
		if err != nil {
			return fmt.Errorf("sim: datastore system of %s: %w", h.Name, err)
		}
		// vcsim names a NAS datastore after the last element of LocalPath and
		// keeps its files there.
		ds, err := dss.CreateNasDatastore(ctx, types.HostNasVolumeSpec{
			RemoteHost: "nfs01.podvisor.local",
			RemotePath: "/export/" + SharedDatastore,
			LocalPath:  shared.Dir,
			AccessMode: string(types.HostMountModeReadWrite),
			Type:       string(types.HostFileSystemVolumeFileSystemTypeNFS),
		})
		if err != nil {
			return fmt.Errorf("sim: mount %s on %s: %w", shared.Name, h.Name, err)
		}
		// vcsim returns the new datastore's reference only for the first
		// mount; later mounts of the same datastore return an empty one.
		if shared.Ref.Value == "" {
			shared.Ref = ds.Reference()
		}
		shared.Hosts = append(shared.Hosts, h.Name)
	}
	shared.FreeBytes = freeSpace(rng, shared.CapacityBytes, 0.55, 0.80)
	d.datastores = append(d.datastores, shared)

	for _, cl := range d.clusters {
		spec := DatastoreSpec{
			Name:          ClusterDatastore(cl.Name),
			Type:          string(types.HostFileSystemVolumeFileSystemTypeOTHER),
			Cluster:       cl.Name,
			CapacityBytes: 12 * tib,
		}
		spec.Dir = filepath.Join(dir, spec.Name)
		if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
			return fmt.Errorf("sim: datastore %s: %w", spec.Name, err)
		}
		for _, hn := range cl.Hosts {
			dss, err := hostObjs[hn].ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return fmt.Errorf("sim: datastore system of %s: %w", hn, err)
			}
			ds, err := dss.CreateLocalDatastore(ctx, spec.Name, spec.Dir)
			if err != nil {
				return fmt.Errorf("sim: mount %s on %s: %w", spec.Name, hn, err)
			}
			if spec.Ref.Value == "" {
				spec.Ref = ds.Reference()
			}
			spec.Hosts = append(spec.Hosts, hn)
		}
		spec.FreeBytes = freeSpace(rng, spec.CapacityBytes, 0.60, 0.85)
		d.datastores = append(d.datastores, spec)
	}

	c := d.context(ctx)
	for _, spec := range d.datastores {
		ds, ok := c.Map.Get(spec.Ref).(*simulator.Datastore)
		if !ok {
			return fmt.Errorf("sim: datastore %s vanished after creation", spec.Name)
		}
		setCapacity(c, ds, spec.CapacityBytes, spec.FreeBytes)
	}
	for i := range d.hosts {
		for _, spec := range d.datastores {
			if slices.Contains(spec.Hosts, d.hosts[i].Name) {
				d.hosts[i].Datastores = append(d.hosts[i].Datastores, spec.Name)
			}
		}
	}
	return nil
}

// freeSpace draws a used fraction so datastores do not all look empty; free
// space is rounded to GiB like a filesystem report.
func freeSpace(rng *rand.Rand, capacity int64, minFree, maxFree float64) int64 {
	f := minFree + rng.Float64()*(maxFree-minFree)
	return int64(float64(capacity)*f) / gib * gib
}

// setCapacity replaces vcsim's "1 TB per mounting host, all free" with the
// given numbers. vcsim recomputes its own figures if someone calls
// RefreshDatastore, so tests should not rely on capacity after a refresh.
func setCapacity(c *simulator.Context, ds *simulator.Datastore, capacity, free int64) {
	c.WithLock(ds, func() {
		var info types.BaseDatastoreInfo
		switch cur := ds.Info.(type) {
		case *types.NasDatastoreInfo:
			cp := *cur
			cp.FreeSpace, cp.MaxFileSize = free, capacity
			info = &cp
		case *types.LocalDatastoreInfo:
			cp := *cur
			cp.FreeSpace, cp.MaxFileSize = free, capacity
			info = &cp
		}
		changes := []types.PropertyChange{
			{Name: "summary.capacity", Val: capacity},
			{Name: "summary.freeSpace", Val: free},
		}
		if info != nil {
			changes = append(changes, types.PropertyChange{Name: "info", Val: info})
		}
		c.Update(ds, changes)
	})
}

// Datastores lists the datastores with their current capacity and free space.
func (d *Datacenter) Datastores() []DatastoreSpec {
	out := make([]DatastoreSpec, 0, len(d.datastores))
	for _, spec := range d.datastores {
		if cur, err := d.Datastore(spec.Name); err == nil {
			spec = cur
		}
		out = append(out, spec)
	}
	return out
}

// Datastore looks a datastore up by name in the live inventory and returns a
// clear error when there is none. vcsim crashes on a VM or disk path naming a
// datastore that does not exist, so every caller that builds such a path from
// outside input should check it here (or with vsphere.DatastoreByName) first.
func (d *Datacenter) Datastore(name string) (DatastoreSpec, error) {
	if err := validDatastoreName(name); err != nil {
		return DatastoreSpec{}, err
	}
	c := d.context(context.Background())
	for _, e := range c.Map.All("Datastore") {
		ds, ok := e.(*simulator.Datastore)
		if !ok {
			continue
		}
		var spec DatastoreSpec
		var found bool
		var mounts []types.ManagedObjectReference
		c.WithLock(ds, func() {
			if ds.Name != name {
				return
			}
			found = true
			spec = DatastoreSpec{
				Name:          ds.Name,
				Ref:           ds.Self,
				Type:          ds.Summary.Type,
				CapacityBytes: ds.Summary.Capacity,
				FreeBytes:     ds.Summary.FreeSpace,
				Dir:           ds.Info.GetDatastoreInfo().Url,
			}
			for _, m := range ds.Host {
				mounts = append(mounts, m.Key)
			}
		})
		if !found {
			continue
		}
		for _, known := range d.datastores {
			if known.Name == name {
				spec.Cluster = known.Cluster
			}
		}
		for _, ref := range mounts {
			if i, ok := d.hostByRef[ref]; ok {
				spec.Hosts = append(spec.Hosts, d.hosts[i].Name)
			}
		}
		return spec, nil
	}
	return DatastoreSpec{}, fmt.Errorf("sim: datastore %q: %w", name, ErrNotFound)
}

// DatastorePath returns "[name] file" after checking that the datastore
// exists and the file path stays inside it.
func (d *Datacenter) DatastorePath(name, file string) (string, error) {
	if _, err := d.Datastore(name); err != nil {
		return "", err
	}
	clean := filepath.ToSlash(filepath.Clean("/" + file))[1:]
	if file == "" || clean == "" || clean != strings.TrimPrefix(file, "/") || strings.HasPrefix(file, "/") {
		return "", fmt.Errorf("sim: datastore path %q: must be a relative path without . or .. elements", file)
	}
	return fmt.Sprintf("[%s] %s", name, clean), nil
}

func validDatastoreName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("sim: datastore name: required")
	case strings.ContainsAny(name, "[]/"):
		return fmt.Errorf("sim: datastore name %q: must not contain '[', ']' or '/'", name)
	}
	return nil
}
