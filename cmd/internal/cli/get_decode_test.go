package cli

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/podvisor/podvisor/events"
)

// A resource's decode reads a KV value into its row exactly as the value
// decodes into the stored record the row embeds.
func TestDecodeRowReadsTheRecord(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	tests := []struct {
		resource string
		rec      any // a populated record
		embedded func(record) any
	}{
		{"pods", &events.PodRecord{UID: "u1", Namespace: "team-a", Name: "web", Host: "esx-1-01", Phase: events.PodPhaseRunning, CreatedAt: now,
			Pod:               corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "busybox"}}}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "a", Ready: true, RestartCount: 2}}},
			func(r record) any { return &r.(*podRow).PodRecord }},
		{"vms", &events.VMRecord{Namespace: "team-a", Name: "db", UID: "u2", Generation: 3, Labels: map[string]string{"app": "db"},
			Size: events.VMSize{CPUs: 2, MemoryMiB: 2048}},
			func(r record) any { return &r.(*vmRow).VMRecord }},
		{"hosts", &events.HostRecord{HostInfo: events.HostInfo{Name: "esx-1-01", Cluster: "c1", Labels: map[string]string{"zone": "a"}}, Pods: 4},
			func(r record) any { return &r.(*hostRow).HostRecord }},
		{"migrations", &events.MigrationRecord{ID: "m1", Namespace: "default", Pod: "web", Phase: events.MigrationPhasePending, CreatedAt: now},
			func(r record) any { return &r.(*migrationRow).MigrationRecord }},
		{"drains", &events.DrainRecord{Host: "esx-1-02", Phase: "Draining", RequestID: "r1", Migrations: []string{"m1"}, Migrated: 1},
			func(r record) any { return &r.(*drainRow).DrainRecord }},
		{"guestclusters", &events.GuestClusterRecord{Namespace: "team-a", Name: "gc1", Phase: "Ready", Endpoint: "https://127.0.0.1:6443",
			Spec: events.GuestClusterSpec{Version: "v1.37.2"}},
			func(r record) any { return &r.(*guestClusterRow).GuestClusterRecord }},
		{"networks", &events.NetworkRecord{Name: "blue", Version: 2, Status: "Ready"},
			func(r record) any { return &r.(*networkRow).NetworkRecord }},
		{"networkservices", &events.NetworkServiceRecord{Name: "web", Status: "Ready", Reason: "r", UpdatedAt: now},
			func(r record) any { return &r.(*networkServiceRow).NetworkServiceRecord }},
		{"vmclasses", &events.VMClassRecord{Class: events.VirtualMachineClass{Metadata: events.Meta{Name: "small"}}, UpdatedAt: now},
			func(r record) any { return &r.(*vmClassRow).VMClassRecord }},
		{"vmimages", &events.VMImageRecord{Image: events.VirtualMachineImage{Metadata: events.Meta{Name: "debian"}}, LibraryItemID: "li-1", Ready: true, UpdatedAt: now},
			func(r record) any { return &r.(*vmImageRow).VMImageRecord }},
	}
	for _, tt := range tests {
		t.Run(tt.resource, func(t *testing.T) {
			res, ok := lookupResource(tt.resource)
			if !ok {
				t.Fatalf("no resource %q", tt.resource)
			}
			value, err := json.Marshal(tt.rec)
			if err != nil {
				t.Fatal(err)
			}
			want := reflect.New(reflect.TypeOf(tt.rec).Elem()).Interface()
			if err := json.Unmarshal(value, want); err != nil {
				t.Fatal(err)
			}
			got, err := res.decode(value)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(tt.embedded(got), want) {
				t.Errorf("decode = %+v, want %+v", tt.embedded(got), want)
			}
			// Its table row fills the header and names the object (a
			// migration's long ID in -o wide).
			row := got.Row(now)
			if len(row) != len(res.header) {
				t.Errorf("row %q under header %q: %d cells for %d columns", row, res.header, len(row), len(res.header))
			}
			if res.wide != nil {
				row = append(row, res.wide(got)...)
			}
			if !slices.Contains(row, got.Name()) {
				t.Errorf("row %q does not show the name %q", row, got.Name())
			}
			if _, err := res.decode([]byte(`["not", "a", "record"]`)); err == nil {
				t.Error("decode of a malformed value: no error")
			}
		})
	}
}
