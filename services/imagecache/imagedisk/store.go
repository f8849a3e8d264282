package imagedisk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/imagelocality"
)

// Errors callers tell apart.
var (
	ErrUnknownDatastore = errors.New("unknown datastore")
	ErrNotFound         = errors.New("not found on datastore")
)

// File names inside a chain folder.
const (
	// DiskFile is the disk's descriptor; written last, it marks the chain
	// complete.
	DiskFile = "disk.vmdk"
	// FlatFile is the disk's flat extent: the layer's erofs image.
	FlatFile     = "disk-flat.vmdk"
	manifestsDir = "manifests"
)

// Datastore is what the image cache needs to know about a datastore.
type Datastore struct {
	Name      string
	Capacity  int64
	FreeSpace int64
	// Hosts are the names of the hosts that mount it, sorted.
	Hosts []string
}

// Store creates, copies, scans and deletes image chains on the datastores of
// one datacenter.
type Store struct {
	c      *vim25.Client
	dc     *object.Datacenter
	finder *find.Finder
	vdm    *object.VirtualDiskManager
	fm     *object.FileManager

	mu  sync.Mutex
	dss map[string]*object.Datastore // known datastores by name
}

// New returns a Store for the datacenter dc.
func New(c *vim25.Client, dc *object.Datacenter) *Store {
	f := find.NewFinder(c, false)
	f.SetDatacenter(dc)
	return &Store{c: c, dc: dc, finder: f, vdm: object.NewVirtualDiskManager(c), fm: object.NewFileManager(c), dss: map[string]*object.Datastore{}}
}

// hexOf is the folder name of a chainID ("sha256:<hex>" → "<hex>").
func hexOf(chainID string) string {
	if _, h, ok := strings.Cut(chainID, ":"); ok {
		return h
	}
	return chainID
}

// ChainDir is the datastore path of a chain's folder.
func ChainDir(ds, chainID string) string {
	return fmt.Sprintf("[%s] %s/%s", ds, events.ImageRoot, hexOf(chainID))
}

// DiskPath is the datastore path of a chain's disk.
func DiskPath(ds, chainID string) string { return ChainDir(ds, chainID) + "/" + DiskFile }

// FlatPath is the datastore path of a chain's flat extent (the filesystem).
func FlatPath(ds, chainID string) string { return ChainDir(ds, chainID) + "/" + FlatFile }

func relPath(chainID, file string) string { return path.Join(events.ImageRoot, hexOf(chainID), file) }

// Datastores lists the datacenter's datastores with their free space and the
// hosts mounting them, and refreshes the set of names the Store accepts.
func (s *Store) Datastores(ctx context.Context) ([]Datastore, error) {
	m := view.NewManager(s.c)
	v, err := m.CreateContainerView(ctx, s.dc.Reference(), []string{"Datastore", "HostSystem"}, true)
	if err != nil {
		return nil, fmt.Errorf("list datastores: %w", err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var dss []mo.Datastore
	if err := v.Retrieve(ctx, []string{"Datastore"}, []string{"name", "summary", "host"}, &dss); err != nil {
		return nil, fmt.Errorf("list datastores: %w", err)
	}
	var hosts []mo.HostSystem
	if err := v.Retrieve(ctx, []string{"HostSystem"}, []string{"name"}, &hosts); err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	hostName := map[types.ManagedObjectReference]string{}
	for _, h := range hosts {
		hostName[h.Reference()] = h.Name
	}
	out := make([]Datastore, 0, len(dss))
	known := map[string]*object.Datastore{}
	for _, d := range dss {
		info := Datastore{Name: d.Name, Capacity: d.Summary.Capacity, FreeSpace: d.Summary.FreeSpace}
		seen := map[string]bool{}
		for _, hm := range d.Host {
			if n := hostName[hm.Key]; n != "" && !seen[n] {
				seen[n] = true
				info.Hosts = append(info.Hosts, n)
			}
		}
		sort.Strings(info.Hosts)
		out = append(out, info)
		obj := object.NewDatastore(s.c, d.Reference())
		obj.InventoryPath = d.Name
		obj.DatacenterPath = s.dc.InventoryPath
		known[d.Name] = obj
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	s.mu.Lock()
	s.dss = known
	s.mu.Unlock()
	return out, nil
}

// datastore returns the object of a known datastore name.
func (s *Store) datastore(ctx context.Context, name string) (*object.Datastore, error) {
	s.mu.Lock()
	ds, ok := s.dss[name]
	s.mu.Unlock()
	if ok {
		return ds, nil
	}
	if _, err := s.Datastores(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	ds, ok = s.dss[name]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("datastore %q: %w", name, ErrUnknownDatastore)
	}
	return ds, nil
}

// Begin starts (or restarts) a chain folder: whatever a crashed pull left is
// removed and the folder is made. Until WriteDisk writes its descriptor the
// folder is partial.
func (s *Store) Begin(ctx context.Context, rec events.ChainRecord) error {
	if _, err := s.datastore(ctx, rec.Datastore); err != nil {
		return err
	}
	dir := ChainDir(rec.Datastore, rec.ChainID)
	if err := s.deletePath(ctx, dir); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("clear %s: %w", dir, err)
	}
	if err := s.fm.MakeDirectory(ctx, dir, s.dc, true); err != nil {
		return fmt.Errorf("make %s: %w", dir, err)
	}
	return nil
}

// WriteDisk stores the chain's disk: the flat extent (size bytes read from
// flat, a multiple of the sector size: the layer's filesystem image), then
// the descriptor naming it, whose ddb.podvisor.* keys carry the chain's
// identity and parent. Both go through the datastore file API.
func (s *Store) WriteDisk(ctx context.Context, rec events.ChainRecord, fs string, flat io.Reader, size int64) error {
	ds, err := s.datastore(ctx, rec.Datastore)
	if err != nil {
		return err
	}
	if size <= 0 || size%SectorSize != 0 {
		return fmt.Errorf("disk %s: extent of %d bytes is not a positive multiple of %d", rec.Disk, size, SectorSize)
	}
	p := soap.DefaultUpload
	p.ContentLength = size
	if err := ds.Upload(ctx, flat, relPath(rec.ChainID, FlatFile), &p); err != nil {
		return fmt.Errorf("upload %s: %w", FlatPath(rec.Datastore, rec.ChainID), err)
	}
	desc, err := Descriptor(rec, fs, size)
	if err != nil {
		return err
	}
	return s.putFile(ctx, rec.Datastore, relPath(rec.ChainID, DiskFile), desc)
}

// WriteManifest records an image's manifest on the datastore, so that a
// rebuild after Redis loss knows which chains make which image.
func (s *Store) WriteManifest(ctx context.Context, dsName string, m imagelocality.Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return s.putFile(ctx, dsName, path.Join(events.ImageRoot, manifestsDir, hexOf(m.Digest)+".json"), b)
}

func (s *Store) putFile(ctx context.Context, dsName, rel string, b []byte) error {
	ds, err := s.datastore(ctx, dsName)
	if err != nil {
		return err
	}
	p := soap.DefaultUpload
	p.ContentLength = int64(len(b))
	if err := ds.Upload(ctx, bytes.NewReader(b), rel, &p); err != nil {
		return fmt.Errorf("write [%s] %s: %w", dsName, rel, err)
	}
	return nil
}

func (s *Store) getFile(ctx context.Context, ds *object.Datastore, rel string) ([]byte, error) {
	rc, _, err := ds.Download(ctx, rel, &soap.DefaultDownload)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ds.Path(rel), err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ds.Path(rel), err)
	}
	return b, nil
}

// ReadFlat opens a chain's flat extent (tests and checks read it back).
func (s *Store) ReadFlat(ctx context.Context, dsName, chainID string) (io.ReadCloser, int64, error) {
	ds, err := s.datastore(ctx, dsName)
	if err != nil {
		return nil, 0, err
	}
	rc, n, err := ds.Download(ctx, relPath(chainID, FlatFile), &soap.DefaultDownload)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", FlatPath(dsName, chainID), err)
	}
	return rc, n, nil
}

// ReadDisk reads a chain's descriptor back as a record (state ready).
func (s *Store) ReadDisk(ctx context.Context, dsName, chainID string) (events.ChainRecord, error) {
	ds, err := s.datastore(ctx, dsName)
	if err != nil {
		return events.ChainRecord{}, err
	}
	b, err := s.getFile(ctx, ds, relPath(chainID, DiskFile))
	if err != nil {
		return events.ChainRecord{}, err
	}
	return ParseDescriptor(b, dsName)
}

// Copy copies a ready chain's disk from one datastore to another with
// vSphere's own disk copy: no registry is involved. The descriptor names
// the parent by chainID, so it holds on the destination as it is.
func (s *Store) Copy(ctx context.Context, rec events.ChainRecord, dst string) (events.ChainRecord, error) {
	if _, err := s.datastore(ctx, rec.Datastore); err != nil {
		return rec, err
	}
	if _, err := s.datastore(ctx, dst); err != nil {
		return rec, err
	}
	out := rec
	out.Datastore = dst
	out.Disk = DiskPath(dst, rec.ChainID)
	out.Blob = ""
	if rec.Parent != "" {
		out.ParentDisk = DiskPath(dst, rec.Parent)
	}
	if err := s.Begin(ctx, out); err != nil {
		return rec, err
	}
	task, err := s.vdm.CopyVirtualDisk(ctx, rec.Disk, s.dc, out.Disk, s.dc, nil, true)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		return rec, fmt.Errorf("copy disk %s to %s: %w", rec.Disk, out.Disk, err)
	}
	out.State = events.ChainStateReady
	return out, nil
}

// Delete removes a chain folder; a folder already gone is not an error.
func (s *Store) Delete(ctx context.Context, dsName, chainID string) error {
	if _, err := s.datastore(ctx, dsName); err != nil {
		return err
	}
	err := s.deletePath(ctx, ChainDir(dsName, chainID))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

func (s *Store) deletePath(ctx context.Context, p string) error {
	task, err := s.fm.DeleteDatastoreFile(ctx, p, s.dc)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("%s: %w", p, ErrNotFound)
		}
		return fmt.Errorf("delete %s: %w", p, err)
	}
	return nil
}

func isNotFound(err error) bool {
	return fault.Is(err, &types.FileNotFound{}) || fault.Is(err, &types.CannotDeleteFile{}) && strings.Contains(err.Error(), "no such file")
}

// Scan reads the chain folders and manifests of a datastore. A chain
// folder with a valid descriptor is ready; one without (a pull that
// crashed, or is still running elsewhere) is returned in partial, for the
// caller to leave to the next pull.
func (s *Store) Scan(ctx context.Context, dsName string) (ready, partial []events.ChainRecord, manifests []imagelocality.Manifest, err error) {
	ds, err := s.datastore(ctx, dsName)
	if err != nil {
		return nil, nil, nil, err
	}
	browser, err := ds.Browser(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("browse %s: %w", dsName, err)
	}
	spec := &types.HostDatastoreBrowserSearchSpec{MatchPattern: []string{DiskFile, "*.json"}}
	task, err := browser.SearchDatastoreSubFolders(ctx, ds.Path(events.ImageRoot), spec)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("search %s: %w", ds.Path(events.ImageRoot), err)
	}
	info, err := task.WaitForResult(ctx)
	if err != nil {
		if fault.Is(err, &types.FileNotFound{}) {
			return nil, nil, nil, nil
		}
		return nil, nil, nil, fmt.Errorf("search %s: %w", ds.Path(events.ImageRoot), err)
	}
	results, _ := info.Result.(types.ArrayOfHostDatastoreBrowserSearchResults)
	for _, r := range results.HostDatastoreBrowserSearchResults {
		folder := r.FolderPath // "[ds] podvisor-images/<hex>" (maybe with a trailing slash)
		var dp object.DatastorePath
		if !dp.FromString(folder) {
			continue
		}
		rel := strings.TrimSuffix(dp.Path, "/")
		if path.Base(rel) == manifestsDir {
			for _, f := range r.File {
				b, err := s.getFile(ctx, ds, path.Join(rel, f.GetFileInfo().Path))
				if err != nil {
					return nil, nil, nil, err
				}
				var m imagelocality.Manifest
				if json.Unmarshal(b, &m) == nil && m.Digest != "" {
					manifests = append(manifests, m)
				}
			}
			continue
		}
		if path.Dir(rel) != events.ImageRoot || !chainDirRE.MatchString(path.Base(rel)) {
			continue
		}
		id := "sha256:" + path.Base(rel)
		var rec events.ChainRecord
		found := false
		for _, f := range r.File {
			if f.GetFileInfo().Path != DiskFile {
				continue
			}
			b, err := s.getFile(ctx, ds, path.Join(rel, DiskFile))
			if err != nil {
				return nil, nil, nil, err
			}
			if rec, err = ParseDescriptor(b, dsName); err == nil && rec.ChainID == id {
				found = true
			}
		}
		if !found {
			partial = append(partial, events.ChainRecord{ChainID: id, Datastore: dsName, Disk: DiskPath(dsName, id)})
			continue
		}
		ready = append(ready, rec)
	}
	return ready, partial, manifests, nil
}

var chainDirRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Client is the vSphere client the store uses.
func (s *Store) Client() *vim25.Client { return s.c }
