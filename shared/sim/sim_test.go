package sim_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/shared/sim"
)

func start(t *testing.T, cfg sim.Config) *sim.Datacenter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := sim.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(d.Close)
	return d
}

func client(t *testing.T, d *sim.Datacenter) *govmomi.Client {
	t.Helper()
	c, err := d.Client(context.Background())
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	return c
}

func retrieveAll[T any](t *testing.T, c *govmomi.Client, kind string, props []string) []T {
	t.Helper()
	ctx := context.Background()
	v, err := view.NewManager(c.Client).CreateContainerView(ctx, c.ServiceContent.RootFolder, []string{kind}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = v.Destroy(ctx) }()
	var out []T
	if err := v.Retrieve(ctx, []string{kind}, props, &out); err != nil {
		t.Fatalf("retrieve %s: %v", kind, err)
	}
	return out
}

func TestStartDefaultsIsFast(t *testing.T) {
	begin := time.Now()
	d := start(t, sim.Config{})
	elapsed := time.Since(begin)
	// The budget is 1.5 s on a quiet machine; the test allows for a busy one.
	if elapsed > 3*time.Second && !raceEnabled {
		t.Errorf("starting 2x8 took %v, want well under 1.5 s", elapsed)
	}
	t.Logf("2x8 datacenter started in %v", elapsed)

	if got := len(d.Hosts()); got != 16 {
		t.Errorf("hosts = %d, want 16", got)
	}
	var names []string
	for _, c := range d.Clusters() {
		names = append(names, c.Name)
	}
	if want := []string{"cluster-1", "cluster-2"}; !slices.Equal(names, want) {
		t.Errorf("clusters = %v, want %v", names, want)
	}
	u := d.URL()
	if u.User.Username() != sim.DefaultUsername || u.Hostname() != "127.0.0.1" || u.Path != "/sdk" {
		t.Errorf("URL = %s, want podvisor@127.0.0.1/sdk", u.Redacted())
	}
}

func TestHardwareReportedByAPI(t *testing.T) {
	d := start(t, sim.Config{Clusters: 2, HostsPerCluster: 6, Seed: 42})
	c := client(t, d)

	hosts := retrieveAll[mo.HostSystem](t, c, "HostSystem", []string{"name", "summary.hardware", "hardware.cpuInfo", "hardware.memorySize", "hardware.cpuPkg", "hardware.systemInfo"})
	byName := map[string]mo.HostSystem{}
	for _, h := range hosts {
		byName[h.Name] = h
	}
	if len(byName) != 12 {
		t.Fatalf("API reports %d hosts, want 12", len(byName))
	}

	shapes := map[[2]int64]bool{}
	for _, want := range d.Hosts() {
		got, ok := byName[want.Name]
		if !ok {
			t.Errorf("host %s missing from the API", want.Name)
			continue
		}
		hw := got.Summary.Hardware
		if int(hw.NumCpuCores) != want.Cores || int(hw.NumCpuThreads) != want.Threads || int(hw.CpuMhz) != want.MHz ||
			hw.MemorySize != want.MemoryBytes || int(hw.NumCpuPkgs) != want.Packages ||
			hw.Vendor != want.Vendor || hw.Model != want.Model || hw.CpuModel != want.CPUModel {
			t.Errorf("%s: summary.hardware = %d cores %d threads %d MHz %d B %s %s, sim says %+v",
				want.Name, hw.NumCpuCores, hw.NumCpuThreads, hw.CpuMhz, hw.MemorySize, hw.Vendor, hw.Model, want)
		}
		ci := got.Hardware.CpuInfo
		if int(ci.NumCpuCores) != want.Cores || int(ci.NumCpuThreads) != want.Threads || ci.Hz != int64(want.MHz)*1_000_000 {
			t.Errorf("%s: hardware.cpuInfo = %+v, sim says %d cores %d MHz", want.Name, ci, want.Cores, want.MHz)
		}
		if got.Hardware.MemorySize != want.MemoryBytes {
			t.Errorf("%s: hardware.memorySize = %d, sim says %d", want.Name, got.Hardware.MemorySize, want.MemoryBytes)
		}
		if len(got.Hardware.CpuPkg) != want.Packages || got.Hardware.CpuPkg[0].Description != want.CPUModel {
			t.Errorf("%s: hardware.cpuPkg = %+v", want.Name, got.Hardware.CpuPkg)
		}
		if got.Hardware.SystemInfo.Vendor != want.Vendor || got.Hardware.SystemInfo.Uuid == "" {
			t.Errorf("%s: hardware.systemInfo = %+v", want.Name, got.Hardware.SystemInfo)
		}
		if !slices.Contains([]int{32, 48, 64}, want.Cores) {
			t.Errorf("%s: %d cores, want one of 32, 48, 64", want.Name, want.Cores)
		}
		gib := want.MemoryBytes >> 30
		if !slices.Contains([]int64{256, 384, 512, 768}, gib) {
			t.Errorf("%s: %d GiB, want one of 256, 384, 512, 768", want.Name, gib)
		}
		shapes[[2]int64{int64(want.Cores), want.MemoryBytes}] = true
	}
	if len(shapes) < 3 {
		t.Errorf("only %d distinct host shapes among 12 hosts; hardware must be unequal", len(shapes))
	}

	// Cluster summaries and root pools report the sum of their hosts.
	clusters := retrieveAll[mo.ClusterComputeResource](t, c, "ClusterComputeResource", []string{"name", "summary", "resourcePool"})
	for _, cl := range clusters {
		var cores, threads, mhz, mem int64
		for _, h := range d.Hosts() {
			if h.Cluster == cl.Name {
				cores += int64(h.Cores)
				threads += int64(h.Threads)
				mhz += h.CPUCapacityMHz()
				mem += h.MemoryBytes
			}
		}
		s := cl.Summary.GetComputeResourceSummary()
		if int64(s.NumCpuCores) != cores || int64(s.NumCpuThreads) != threads || int64(s.TotalCpu) != mhz ||
			s.TotalMemory != mem || int64(s.EffectiveCpu) != mhz || s.EffectiveMemory != mem>>20 ||
			s.NumHosts != 6 || s.NumEffectiveHosts != 6 {
			t.Errorf("%s summary = %+v, want %d cores %d threads %d MHz %d B", cl.Name, s, cores, threads, mhz, mem)
		}
		var rp mo.ResourcePool
		if err := c.RetrieveOne(context.Background(), *cl.ResourcePool, []string{"runtime"}, &rp); err != nil {
			t.Fatal(err)
		}
		if rp.Runtime.Cpu.MaxUsage != mhz || rp.Runtime.Memory.MaxUsage != mem {
			t.Errorf("%s root pool runtime = cpu %d memory %d, want %d %d", cl.Name, rp.Runtime.Cpu.MaxUsage, rp.Runtime.Memory.MaxUsage, mhz, mem)
		}
	}
}

func TestSeedIsReproducible(t *testing.T) {
	hardware := func(seed int64) []sim.HostSpec {
		d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 8, Seed: seed})
		hs := d.Hosts()
		for i := range hs {
			hs[i].Ref = types.ManagedObjectReference{} // compare hardware, not references
			hs[i].Datastores = nil
		}
		return hs
	}
	a, b, other := hardware(7), hardware(7), hardware(8)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("same seed gave different hardware:\n%v\n%v", a, b)
	}
	if reflect.DeepEqual(a, other) {
		t.Errorf("seeds 7 and 8 gave identical hardware")
	}
}

func TestTwoHostsAreNeverIdentical(t *testing.T) {
	for seed := range int64(20) {
		d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 2, Seed: seed})
		h := d.Hosts()
		if h[0].Cores == h[1].Cores && h[0].MemoryBytes == h[1].MemoryBytes {
			t.Errorf("seed %d: both hosts are %d cores / %d B", seed, h[0].Cores, h[0].MemoryBytes)
		}
		d.Close()
	}
}

func TestLoginRequiresTheConfiguredCredentials(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Username: "admin", Password: "s3cret"})
	ctx := context.Background()

	wrong := d.URL()
	wrong.User = nil
	c, err := govmomi.NewClient(ctx, wrong, true)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Login(ctx, wrongUser("admin", "guess"))
	if err == nil || !strings.Contains(err.Error(), "Login failure") {
		t.Errorf("login with a wrong password: err = %v, want Login failure", err)
	}
	if err := c.Login(ctx, d.URL().User); err != nil {
		t.Errorf("login with the configured credentials: %v", err)
	}
	if d.URL().User.Username() != "admin" {
		t.Errorf("URL user = %q, want admin", d.URL().User.Username())
	}
}

func TestDatastoresAreMountedByScope(t *testing.T) {
	d := start(t, sim.Config{Clusters: 2, HostsPerCluster: 3})
	c := client(t, d)
	ctx := context.Background()

	dss := retrieveAll[mo.Datastore](t, c, "Datastore", []string{"name", "summary", "host"})
	names := map[types.ManagedObjectReference]string{}
	for _, ds := range dss {
		names[ds.Self] = ds.Name
		if ds.Summary.Capacity < 10<<40 || ds.Summary.FreeSpace <= 0 || ds.Summary.FreeSpace >= ds.Summary.Capacity {
			t.Errorf("%s: capacity %d free %d, want >= 10 TiB with some used", ds.Name, ds.Summary.Capacity, ds.Summary.FreeSpace)
		}
	}
	var got []string
	for _, ds := range dss {
		got = append(got, ds.Name)
	}
	slices.Sort(got)
	if want := []string{"cluster-1-ds", "cluster-2-ds", "shared-ds"}; !slices.Equal(got, want) {
		t.Fatalf("datastores = %v, want %v", got, want)
	}

	hosts := retrieveAll[mo.HostSystem](t, c, "HostSystem", []string{"name", "datastore"})
	for _, h := range hosts {
		spec, err := d.Host(h.Name)
		if err != nil {
			t.Fatal(err)
		}
		var mounted []string
		for _, ref := range h.Datastore {
			mounted = append(mounted, names[ref])
		}
		slices.Sort(mounted)
		want := []string{sim.ClusterDatastore(spec.Cluster), sim.SharedDatastore}
		if !slices.Equal(mounted, want) {
			t.Errorf("%s mounts %v, want %v", h.Name, mounted, want)
		}
	}

	shared, err := d.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	if len(shared.Hosts) != 6 || shared.Type != "NFS" || shared.Cluster != "" {
		t.Errorf("shared-ds = %+v, want NFS on 6 hosts", shared)
	}
	if fi, err := os.Stat(shared.Dir); err != nil || !fi.IsDir() {
		t.Errorf("shared-ds directory %s: %v", shared.Dir, err)
	}
	c1, err := d.Datastore("cluster-1-ds")
	if err != nil {
		t.Fatal(err)
	}
	if c1.Cluster != "cluster-1" || !slices.Equal(c1.Hosts, d.Clusters()[0].Hosts) {
		t.Errorf("cluster-1-ds = %+v", c1)
	}

	// Real bytes land in the backing directory.
	ds := object.NewDatastore(c.Client, shared.Ref)
	if err := ds.Upload(ctx, strings.NewReader("layer"), "probe.txt", &soap.DefaultUpload); err != nil {
		t.Fatalf("upload: %v", err)
	}
	if b, err := os.ReadFile(shared.Dir + "/probe.txt"); err != nil || string(b) != "layer" {
		t.Errorf("uploaded file = %q, %v", b, err)
	}

	if _, err := d.Datastore("missing-ds"); !errors.Is(err, sim.ErrNotFound) {
		t.Errorf("Datastore(missing-ds) err = %v, want ErrNotFound", err)
	}
	if _, err := d.Datastore("bad]name"); err == nil || !strings.Contains(err.Error(), "must not contain") {
		t.Errorf("Datastore(bad]name) err = %v, want a naming error", err)
	}
	for _, tc := range []struct {
		ds, file, want, wantErr string
	}{
		{ds: "shared-ds", file: "images/abc.vmdk", want: "[shared-ds] images/abc.vmdk"},
		{ds: "nope", file: "a.vmdk", wantErr: "not found"},
		{ds: "shared-ds", file: "../escape.vmdk", wantErr: "relative path"},
		{ds: "shared-ds", file: "/abs.vmdk", wantErr: "relative path"},
		{ds: "shared-ds", file: "", wantErr: "relative path"},
	} {
		got, err := d.DatastorePath(tc.ds, tc.file)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("DatastorePath(%q, %q) err = %v, want %q", tc.ds, tc.file, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("DatastorePath(%q, %q) = %q, %v; want %q", tc.ds, tc.file, got, err, tc.want)
		}
	}
}

func TestDVSHasEveryHostAndConfiguredPortGroups(t *testing.T) {
	d := start(t, sim.Config{Clusters: 2, HostsPerCluster: 2, PortGroups: []sim.PortGroupSpec{{Name: "pv-mgmt", VLAN: 100}}})
	c := client(t, d)
	ctx := context.Background()

	var dvs mo.DistributedVirtualSwitch
	if err := c.RetrieveOne(ctx, d.DVS(), []string{"name", "summary", "portgroup"}, &dvs); err != nil {
		t.Fatal(err)
	}
	if dvs.Name != sim.DVSName {
		t.Errorf("DVS name = %q", dvs.Name)
	}
	members := map[types.ManagedObjectReference]bool{}
	for _, m := range dvs.Summary.HostMember {
		members[m] = true
	}
	for _, h := range d.Hosts() {
		if !members[h.Ref] {
			t.Errorf("host %s is not a member of %s", h.Name, sim.DVSName)
		}
	}

	finder := find.NewFinder(c.Client, true)
	dc, err := finder.Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	pg, err := finder.Network(ctx, "pv-mgmt")
	if err != nil {
		t.Fatalf("port group pv-mgmt: %v", err)
	}
	var pgmo mo.DistributedVirtualPortgroup
	if err := c.RetrieveOne(ctx, pg.Reference(), []string{"config", "host"}, &pgmo); err != nil {
		t.Fatal(err)
	}
	vlan := pgmo.Config.DefaultPortConfig.(*types.VMwareDVSPortSetting).Vlan.(*types.VmwareDistributedVirtualSwitchVlanIdSpec)
	if vlan.VlanId != 100 {
		t.Errorf("pv-mgmt VLAN = %d, want 100", vlan.VlanId)
	}
	if len(pgmo.Host) != 4 {
		t.Errorf("pv-mgmt is on %d hosts, want all 4", len(pgmo.Host))
	}

	hosts := retrieveAll[mo.HostSystem](t, c, "HostSystem", []string{"name", "network"})
	for _, h := range hosts {
		var found []mo.Network
		if err := c.Retrieve(ctx, h.Network, []string{"name"}, &found); err != nil {
			t.Fatal(err)
		}
		var nets []string
		for _, n := range found {
			nets = append(nets, n.Name)
		}
		if !slices.Contains(nets, sim.DefaultNetwork) || !slices.Contains(nets, "pv-mgmt") {
			t.Errorf("%s networks = %v, want VM Network and pv-mgmt", h.Name, nets)
		}
	}
}

// watch waits until the property of obj satisfies ok, through a real
// WaitForUpdatesEx with MaxWaitSeconds so no wait can outlive the test.
func watch(t *testing.T, c *govmomi.Client, obj types.ManagedObjectReference, prop string, ok func(any) bool) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	pc, err := property.DefaultCollector(c.Client).Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	filter := new(property.WaitFilter).Add(obj, obj.Type, []string{prop})
	filter.Options = &types.WaitOptions{MaxWaitSeconds: types.NewInt32(1)}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		defer cancel()
		defer func() { _ = pc.Destroy(context.Background()) }()
		first := true
		done <- property.WaitForUpdatesEx(ctx, pc, filter, func(updates []types.ObjectUpdate) bool {
			if first {
				first = false // the initial snapshot; the change must come after it
				close(ready)
				return false
			}
			for _, u := range updates {
				for _, ch := range u.ChangeSet {
					if ch.Name == prop && ok(ch.Val) {
						return true
					}
				}
			}
			return false
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("watch %s: %v", prop, err)
	}
	return done
}

func wait(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: watcher: %v", what, err)
		}
	case <-time.After(6 * time.Second):
		t.Errorf("%s: watcher saw nothing", what)
	}
}

func TestFailAndRecoverHostAreObservedByWatchers(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 3})
	c := client(t, d)
	ctx := context.Background()
	h := d.Hosts()[1]
	cluster := d.Clusters()[0]

	// A pod VM on the failing host.
	vm := createVM(t, c, d, h, "pv-test")

	notResponding := func(v any) bool { return v == types.HostSystemConnectionStateNotResponding }
	w1 := watch(t, c, h.Ref, "runtime.connectionState", notResponding)
	w2 := watch(t, c, h.Ref, "summary.runtime.connectionState", notResponding)
	w3 := watch(t, c, vm.Reference(), "runtime.connectionState", func(v any) bool {
		return v == types.VirtualMachineConnectionStateDisconnected
	})
	if err := d.FailHost(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	wait(t, "runtime.connectionState", w1)
	wait(t, "summary.runtime.connectionState", w2)
	wait(t, "vm runtime.connectionState", w3)

	var cl mo.ClusterComputeResource
	if err := c.RetrieveOne(ctx, cluster.Ref, []string{"summary"}, &cl); err != nil {
		t.Fatal(err)
	}
	s := cl.Summary.GetComputeResourceSummary()
	if s.NumEffectiveHosts != 2 || int64(s.EffectiveCpu) != int64(s.TotalCpu)-h.CPUCapacityMHz() {
		t.Errorf("after failure cluster summary = %d effective hosts, %d of %d MHz; want 2 and minus %d",
			s.NumEffectiveHosts, s.EffectiveCpu, s.TotalCpu, h.CPUCapacityMHz())
	}

	w4 := watch(t, c, h.Ref, "runtime.connectionState", func(v any) bool { return v == types.HostSystemConnectionStateConnected })
	if err := d.RecoverHost(ctx, h.Name); err != nil {
		t.Fatal(err)
	}
	wait(t, "recover", w4)
	if err := c.RetrieveOne(ctx, cluster.Ref, []string{"summary"}, &cl); err != nil {
		t.Fatal(err)
	}
	if n := cl.Summary.GetComputeResourceSummary().NumEffectiveHosts; n != 3 {
		t.Errorf("after recovery effective hosts = %d, want 3", n)
	}

	if err := d.FailHost(ctx, "esx-9-99"); !errors.Is(err, sim.ErrNotFound) {
		t.Errorf("FailHost(unknown) err = %v, want ErrNotFound", err)
	}
}

func TestMaintenanceIsObservedByWatchers(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 2})
	c := client(t, d)
	ctx := context.Background()
	h := d.Hosts()[0]
	isTrue := func(v any) bool { return v == true }
	isFalse := func(v any) bool { return v == false }

	w := watch(t, c, h.Ref, "runtime.inMaintenanceMode", isTrue)
	if err := d.SetMaintenance(ctx, h.Name, true); err != nil {
		t.Fatal(err)
	}
	wait(t, "SetMaintenance(true)", w)
	w = watch(t, c, h.Ref, "summary.runtime.inMaintenanceMode", isFalse)
	if err := d.SetMaintenance(ctx, h.Name, false); err != nil {
		t.Fatal(err)
	}
	wait(t, "SetMaintenance(false)", w)

	// The vSphere API's own maintenance task is visible too, and refuses while
	// a powered-on VM remains, as vCenter does.
	host := object.NewHostSystem(c.Client, h.Ref)
	vm := createVM(t, c, d, h, "pv-blocker")
	task, err := vm.PowerOn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	task, err = host.EnterMaintenanceMode(ctx, 0, false, nil)
	if err == nil {
		err = task.Wait(ctx)
	}
	if !fault.Is(err, &types.InvalidState{}) || !strings.Contains(err.Error(), "powered-on") {
		t.Errorf("EnterMaintenanceMode with a powered-on VM: err = %v, want InvalidState naming powered-on VMs", err)
	}
	task, err = vm.PowerOff(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	w = watch(t, c, h.Ref, "runtime.inMaintenanceMode", isTrue)
	task, err = host.EnterMaintenanceMode(ctx, 0, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatalf("EnterMaintenanceMode: %v", err)
	}
	wait(t, "EnterMaintenanceMode_Task", w)

	// The cluster roll-up follows (asynchronously) after the task.
	deadline := time.Now().Add(3 * time.Second)
	for {
		var cl mo.ClusterComputeResource
		if err := c.RetrieveOne(ctx, d.Clusters()[0].Ref, []string{"summary"}, &cl); err != nil {
			t.Fatal(err)
		}
		if cl.Summary.GetComputeResourceSummary().NumEffectiveHosts == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster still counts the host in maintenance as effective")
		}
		time.Sleep(20 * time.Millisecond)
	}

	w = watch(t, c, h.Ref, "runtime.inMaintenanceMode", isFalse)
	task, err = host.ExitMaintenanceMode(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, "ExitMaintenanceMode_Task", w)
}

func createVM(t *testing.T, c *govmomi.Client, d *sim.Datacenter, h sim.HostSpec, name string) *object.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var cluster sim.ClusterSpec
	for _, cl := range d.Clusters() {
		if cl.Name == h.Cluster {
			cluster = cl
		}
	}
	path, err := d.DatastorePath(sim.SharedDatastore, name)
	if err != nil {
		t.Fatal(err)
	}
	spec := types.VirtualMachineConfigSpec{
		Name:     name,
		GuestId:  string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
		NumCPUs:  1,
		MemoryMB: 256,
		Files:    &types.VirtualMachineFileInfo{VmPathName: path},
	}
	host := object.NewHostSystem(c.Client, h.Ref)
	pool := object.NewResourcePool(c.Client, cluster.ResourcePool)
	task, err := folders.VmFolder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatalf("create VM %s: %v", name, err)
	}
	return object.NewVirtualMachine(c.Client, info.Result.(types.ManagedObjectReference))
}

func TestAddFaultFailsMatchingCalls(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := client(t, d)
	h := d.Hosts()[0]

	err := d.AddFault(simulator.FaultInjectionRule{
		MethodName:  "CreateVM_Task",
		ObjectType:  "Folder",
		Probability: 1,
		FaultType:   simulator.FaultTypeInsufficientResourcesFault,
		MaxCount:    1,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	finder := find.NewFinder(c.Client, true)
	dc, _ := finder.Datacenter(ctx, sim.DatacenterName)
	folders, _ := dc.Folders(ctx)
	spec := types.VirtualMachineConfigSpec{Name: "pv-faulted", GuestId: "otherGuest",
		Files: &types.VirtualMachineFileInfo{VmPathName: "[shared-ds]"}}
	_, err = folders.VmFolder.CreateVM(ctx, spec, object.NewResourcePool(c.Client, d.Clusters()[0].ResourcePool), object.NewHostSystem(c.Client, h.Ref))
	if !fault.Is(err, &types.InsufficientResourcesFault{}) {
		t.Errorf("CreateVM with an injected fault: err = %v, want InsufficientResourcesFault", err)
	}
	// MaxCount 1: the next call goes through.
	createVM(t, c, d, h, "pv-after-fault")

	if err := d.AddFault(simulator.FaultInjectionRule{MethodName: "PowerOnVM_Task", Probability: 1}); err != nil {
		t.Fatal(err)
	}
	d.ClearFaults()
	rules := d.Model().Service.GetFaultRules()
	if len(rules) != 1 || rules[0].MethodName != "EnterMaintenanceMode_Task" {
		t.Errorf("after ClearFaults rules = %d, want only the built-in maintenance rule", len(rules))
	}

	for _, tc := range []struct {
		name string
		rule simulator.FaultInjectionRule
		want string
	}{
		{"no method", simulator.FaultInjectionRule{Probability: 1}, "MethodName"},
		{"zero probability", simulator.FaultInjectionRule{MethodName: "PowerOnVM_Task"}, "Probability"},
		{"probability above one", simulator.FaultInjectionRule{MethodName: "PowerOnVM_Task", Probability: 2}, "Probability"},
		{"negative delay", simulator.FaultInjectionRule{MethodName: "PowerOnVM_Task", Probability: 1, Delay: -1}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := d.AddFault(tc.rule); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to name %s", err, tc.want)
			}
		})
	}
}

func TestSetTaskDelaySlowsTasksUntilClose(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	c := client(t, d)
	h := d.Hosts()[0]
	vm := createVM(t, c, d, h, "pv-slow")
	ctx := context.Background()

	if err := d.SetTaskDelay("PowerOn", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	task, err := vm.PowerOn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("PowerOn with a 300 ms delay took %v", took)
	}
	if simulator.TaskDelay.MethodDelay["PowerOn"] != 300 {
		t.Errorf("TaskDelay[PowerOn] = %d, want 300", simulator.TaskDelay.MethodDelay["PowerOn"])
	}
	d.Close()
	if v, ok := simulator.TaskDelay.MethodDelay["PowerOn"]; ok {
		t.Errorf("after Close TaskDelay[PowerOn] = %d, want removed", v)
	}
	if err := d.SetTaskDelay("PowerOn", time.Second); err == nil {
		t.Errorf("SetTaskDelay after Close succeeded")
	}
	if err := (&sim.Datacenter{}).SetTaskDelay("", 0); err == nil || !strings.Contains(err.Error(), "method") {
		t.Errorf("SetTaskDelay(\"\") err = %v, want it to name method", err)
	}
}

func TestCloseStopsServerAndRemovesFiles(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1, Dir: t.TempDir()})
	shared, err := d.Datastore(sim.SharedDatastore)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	d.Close() // twice is fine
	if _, err := os.Stat(shared.Dir); !os.IsNotExist(err) {
		t.Errorf("datastore dir %s still exists after Close: %v", shared.Dir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := govmomi.NewClient(ctx, d.URL(), true); err == nil {
		t.Errorf("server still answers after Close")
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  sim.Config
		want string
	}{
		{"negative clusters", sim.Config{Clusters: -1}, "Clusters"},
		{"too many hosts", sim.Config{HostsPerCluster: 97}, "HostsPerCluster"},
		{"user without password", sim.Config{Username: "u"}, "Password"},
		{"password without user", sim.Config{Password: "p"}, "Username"},
		{"bad addr", sim.Config{Addr: "localhost"}, "Addr"},
		{"missing dir", sim.Config{Dir: "/nonexistent/podvisor"}, "Dir"},
		{"port group without name", sim.Config{PortGroups: []sim.PortGroupSpec{{VLAN: 1}}}, "PortGroups[0].Name"},
		{"port group reusing the switch name", sim.Config{PortGroups: []sim.PortGroupSpec{{Name: sim.DVSName}}}, "already used"},
		{"bad vlan", sim.Config{PortGroups: []sim.PortGroupSpec{{Name: "x", VLAN: 5000}}}, "VLAN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sim.Start(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start err = %v, want it to name %s", err, tc.want)
			}
		})
	}
}

func TestListenFailureIsAnError(t *testing.T) {
	d := start(t, sim.Config{Clusters: 1, HostsPerCluster: 1})
	_, err := sim.Start(context.Background(), sim.Config{Clusters: 1, HostsPerCluster: 1, Addr: d.URL().Host})
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("Start on a busy port: err = %v, want a listen error", err)
	}
}

func wrongUser(u, p string) *url.Userinfo { return url.UserPassword(u, p) }

func TestManagementVLANCutsOffHostsCarryingIt(t *testing.T) {
	d := start(t, sim.Config{Clusters: 2, HostsPerCluster: 2})
	c := client(t, d)
	ctx := context.Background()
	if err := d.SetManagementVLAN(4000); err != nil {
		t.Fatal(err)
	}
	if err := d.SetManagementVLAN(5000); err == nil || !strings.Contains(err.Error(), "management VLAN") {
		t.Errorf("SetManagementVLAN(5000) err = %v, want a range error", err)
	}

	// A switch spanning cluster-1 only, like network-config's scoped switches.
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.Datacenter(ctx, sim.DatacenterName)
	if err != nil {
		t.Fatal(err)
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	task, err := folders.NetworkFolder.CreateDVS(ctx, types.DVSCreateSpec{ConfigSpec: &types.VMwareDVSConfigSpec{
		DVSConfigSpec: types.DVSConfigSpec{Name: "pv-dvs-c1"}}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	dvs := object.NewDistributedVirtualSwitch(c.Client, info.Result.(types.ManagedObjectReference))
	spec := &types.VMwareDVSConfigSpec{}
	for _, name := range d.Clusters()[0].Hosts {
		h, _ := d.Host(name)
		spec.Host = append(spec.Host, types.DistributedVirtualSwitchHostMemberConfigSpec{Operation: "add", Host: h.Ref})
	}
	if task, err = dvs.Reconfigure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	c1, _ := d.Host(d.Clusters()[0].Hosts[0])
	c2, _ := d.Host(d.Clusters()[1].Hosts[0])
	lost := watch(t, c, c1.Ref, "runtime.connectionState", func(v any) bool { return v == types.HostSystemConnectionStateNotResponding })
	vlan := func(id int32) *types.VMwareDVSPortSetting {
		return &types.VMwareDVSPortSetting{Vlan: &types.VmwareDistributedVirtualSwitchVlanIdSpec{VlanId: id}}
	}
	if task, err = dvs.AddPortgroup(ctx, []types.DVPortgroupConfigSpec{{Name: "pv-bad", Type: "earlyBinding", NumPorts: 8, DefaultPortConfig: vlan(4000)}}); err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, "port group on the management VLAN", lost)

	state := func(ref types.ManagedObjectReference) types.HostSystemConnectionState {
		var h mo.HostSystem
		if err := c.RetrieveOne(ctx, ref, []string{"runtime.connectionState"}, &h); err != nil {
			t.Fatal(err)
		}
		return h.Runtime.ConnectionState
	}
	if got := state(c2.Ref); got != types.HostSystemConnectionStateConnected {
		t.Errorf("cluster-2 host not on the switch is %s, want connected", got)
	}

	// Rolling the port group back to another VLAN restores the hosts.
	pgRef, err := finder.Network(ctx, "pv-bad")
	if err != nil {
		t.Fatal(err)
	}
	pg := object.NewDistributedVirtualPortgroup(c.Client, pgRef.Reference())
	back := watch(t, c, c1.Ref, "runtime.connectionState", func(v any) bool { return v == types.HostSystemConnectionStateConnected })
	if task, err = pg.Reconfigure(ctx, types.DVPortgroupConfigSpec{Name: "pv-bad", Type: "earlyBinding", NumPorts: 8, DefaultPortConfig: vlan(200)}); err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, "port group moved off the management VLAN", back)

	// A failed host stays down while cut off, and comes back only when both
	// causes are gone.
	if err := d.FailHost(ctx, c1.Name); err != nil {
		t.Fatal(err)
	}
	if err := d.RecoverHost(ctx, c1.Name); err != nil {
		t.Fatal(err)
	}
	if got := state(c1.Ref); got != types.HostSystemConnectionStateConnected {
		t.Errorf("after fail+recover with no cut: %s, want connected", got)
	}

	// Turning the rule off with a cut host reconnects it.
	if task, err = pg.Reconfigure(ctx, types.DVPortgroupConfigSpec{Name: "pv-bad", Type: "earlyBinding", NumPorts: 8, DefaultPortConfig: vlan(4000)}); err != nil {
		t.Fatal(err)
	}
	if err := task.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for state(c1.Ref) != types.HostSystemConnectionStateNotResponding {
		if time.Now().After(deadline) {
			t.Fatal("host not cut off after moving the port group back onto the management VLAN")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.SetManagementVLAN(0); err != nil {
		t.Fatal(err)
	}
	if got := state(c1.Ref); got != types.HostSystemConnectionStateConnected {
		t.Errorf("after SetManagementVLAN(0): %s, want connected", got)
	}
}
