package events

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// loadSample decodes testdata/<ceType>.json; the payload validation tests
// start from a valid sample and break one thing.
func loadSample(t *testing.T, ceType string) any {
	t.Helper()
	data, err := os.ReadFile("testdata/" + ceType + ".json")
	if err != nil {
		t.Fatal(err)
	}
	v, err := Decode(ceType, data)
	if err != nil {
		t.Fatalf("sample %s: %v", ceType, err)
	}
	return v
}

func TestPayloadValidation(t *testing.T) {
	tests := []struct {
		name   string
		ceType string
		break_ func(v any)
		field  string // the first field the error must name
		reason string // substring of the message
	}{
		{"requested uid", TypePodRequested, func(v any) { v.(*PodRequested).UID = "fixed" }, "uid", "podvisor assigns pod uids"},
		{"requested metadata.uid", TypePodRequested, func(v any) { v.(*PodRequested).Pod.UID = "other" }, "pod.metadata.uid", "podvisor assigns pod uids"},
		{"requested pod invalid", TypePodRequested, func(v any) { v.(*PodRequested).Pod.Spec.Containers[1].Image = "" }, "pod.spec.containers[1].image", "Required"},
		{"accepted uid missing", TypePodAccepted, func(v any) { v.(*PodAccepted).UID = "" }, "uid", "Required"},
		{"accepted pod not normalized", TypePodAccepted, func(v any) { v.(*PodAccepted).Pod.Namespace = "" }, "pod.metadata.namespace", "normalize"},
		{"accepted size inconsistent", TypePodAccepted, func(v any) { v.(*PodAccepted).Size.VCPUs = 8 }, "size.vcpus", "ceil(cpuMilli/1000) = 1"},
		{"accepted size memory not multiple of 4", TypePodAccepted, func(v any) { v.(*PodAccepted).Size.MemoryMiB = 449 }, "size.memoryMiB", "multiple of 4"},
		{"accepted duplicate network", TypePodAccepted, func(v any) { v.(*PodAccepted).Networks = []string{"a", "a"} }, "networks[1]", "Duplicate"},
		{"accepted image differs from pod", TypePodAccepted, func(v any) { v.(*PodAccepted).Images[1] = "busybox" }, "images[1]", "must equal the image of container"},
		{"rejected reason not CamelCase", TypePodRejected, func(v any) { v.(*PodRejected).Reason = "bad input" }, "reason", "CamelCase"},
		{"scheduled without host", TypePodScheduled, func(v any) { v.(*PodScheduled).Host = "" }, "host", "Required"},
		{"scheduled host with wildcard", TypePodScheduled, func(v any) { v.(*PodScheduled).Host = "h*" }, "host", "'*'"},
		{"unschedulable counts too many hosts", TypePodUnschedulable, func(v any) { v.(*PodUnschedulable).Hosts = 3 }, "reasons", "more hosts than hosts (3)"},
		{"images chain does not end in disk", TypePodImagesReady, func(v any) {
			c := &v.(*PodImagesReady).Containers[0]
			c.Chain = c.Chain[:2]
		}, "containers[0].chain[1]", "last disk of the chain must be disk"},
		{"images bad digest", TypePodImagesReady, func(v any) { v.(*PodImagesReady).Containers[1].Digest = "sha256:abc" }, "containers[1].digest", "OCI digest"},
		{"images bad disk path", TypePodImagesReady, func(v any) {
			c := &v.(*PodImagesReady).Containers[1]
			c.Disk, c.Chain[len(c.Chain)-1] = "podvisor/x.vmdk", "podvisor/x.vmdk"
		}, "containers[1].disk", "datastore path"},
		{"images failed without reason", TypePodImagesFailed, func(v any) { v.(*PodImagesFailed).Reason = "" }, "reason", "Required"},
		{"images retrying without attempt", TypePodImagesRetrying, func(v any) { v.(*PodImagesRetrying).Attempt = 0 }, "attempt", "greater than zero"},
		{"images retrying without message", TypePodImagesRetrying, func(v any) { v.(*PodImagesRetrying).Message = " " }, "message", "Required"},
		{"attached bad ip", TypePodNetworkAttached, func(v any) { v.(*PodNetworkAttached).Attachments[0].IP = "10.20.0.300" }, "attachments[0].ip", "IPv4"},
		{"attached bad prefix", TypePodNetworkAttached, func(v any) { v.(*PodNetworkAttached).Attachments[1].PrefixLength = 33 }, "attachments[1].prefixLength", "between 1 and 32"},
		{"attached bad mac", TypePodNetworkAttached, func(v any) { v.(*PodNetworkAttached).Attachments[1].MAC = "00:50:56" }, "attachments[1].mac", "48-bit"},
		{"attached duplicate network", TypePodNetworkAttached, func(v any) {
			e := v.(*PodNetworkAttached)
			e.Attachments[1].Network = e.Attachments[0].Network
		}, "attachments[1].network", "Duplicate"},
		{"network failed bad network", TypePodNetworkFailed, func(v any) { v.(*PodNetworkFailed).Network = "Back_End" }, "network", "RFC 1123"},
		{"reported phase", TypePodContainersReported, func(v any) { v.(*PodContainersReported).Phase = "Sleeping" }, "phase", "supported values"},
		{"reported duplicate container", TypePodContainersReported, func(v any) {
			r := v.(*PodContainersReported)
			r.ContainerStatuses[1].Name = "app"
		}, "containerStatuses[1].name", "Duplicate"},
		{"reported two states", TypePodContainersReported, func(v any) {
			r := v.(*PodContainersReported)
			r.ContainerStatuses[0].State.Waiting = r.ContainerStatuses[1].State.Waiting
		}, "containerStatuses[0].state", "exactly one"},
		{"reported without boot id", TypePodContainersReported, func(v any) { v.(*PodContainersReported).BootID = "" }, "bootID", "Required"},
		{"running IPv6", TypePodRunning, func(v any) { v.(*PodRunning).IP = "fe80::1" }, "ip", "IPv4"},
		{"vm ready without vm", TypePodVMReady, func(v any) { v.(*PodVMReady).VM = "" }, "vm", "Required"},
		{"failed without message", TypePodFailed, func(v any) { v.(*PodFailed).Message = " " }, "message", "Required"},
		{"delete requested without name", TypePodDeleteRequested, func(v any) { v.(*PodDeleteRequested).Name = "" }, "name", "Required"},
		{"deleted image is not a digest", TypePodDeleted, func(v any) { v.(*PodDeleted).Images[0] = "nginx:1.27" }, "images[0]", "OCI digest"},
		{"deleted bad ip", TypePodDeleted, func(v any) { v.(*PodDeleted).IPs[1].IP = "" }, "ips[1].ip", "Required"},
		{"evicted without host", TypePodEvicted, func(v any) { v.(*PodEvicted).Host = "" }, "host", "Required"},
		{"pulled chain broken", TypeImagePulled, func(v any) { v.(*ImagePulled).Chain[2].Parent = "" }, "chain[2].parent", "chainID of chain[1]"},
		{"pulled base with parent", TypeImagePulled, func(v any) {
			e := v.(*ImagePulled)
			e.Chain[0].Parent = e.Chain[1].ChainID
		}, "chain[0].parent", "no parent"},
		{"pulled more layers than chain", TypeImagePulled, func(v any) { v.(*ImagePulled).LayersPulled = 4 }, "layersPulled", "exceeds"},
		{"evicted image negative bytes", TypeImageEvicted, func(v any) { v.(*ImageEvicted).Bytes = -1 }, "bytes", "negative"},
		{"declared vlan", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Spec.VLAN = 4095 }, "network.spec.vlan", "4094"},
		{"declared gateway is broadcast", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Spec.Gateway = "10.20.0.255" }, "network.spec.gateway", "broadcast"},
		{"declared cidr too small", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Spec.CIDR = "10.20.0.0/31" }, "network.spec.cidr", "/30 or larger"},
		{"declared cidr IPv6", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Spec.CIDR = "fd00::/64" }, "network.spec.cidr", "IPv4 subnet"},
		{"declared duplicate scope host", TypeNetworkDeclared, func(v any) {
			s := &v.(*NetworkDeclared).Network.Spec.Scope
			s.Hosts = append(s.Hosts, s.Hosts[0])
		}, "network.spec.scope.hosts[1]", "Duplicate"},
		{"declared wrong kind", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Kind = "Pod" }, "network.kind", "Network"},
		{"declared name", TypeNetworkDeclared, func(v any) { v.(*NetworkDeclared).Network.Metadata.Name = "" }, "network.metadata.name", "Required"},
		{"realized host ready and failed", TypeNetworkRealized, func(v any) {
			e := v.(*NetworkRealized)
			e.Failed = []string{e.Ready[0]}
		}, "failed[0]", "Duplicate"},
		{"realized version 0", TypeNetworkRealized, func(v any) { v.(*NetworkRealized).Version = 0 }, "version", "1 or more"},
		{"images disk outside the image folder", TypePodImagesReady, func(v any) {
			c := &v.(*PodImagesReady).Containers[1]
			c.Disk = "[datastore1] pv-other/rw-0.vmdk"
			c.Chain[len(c.Chain)-1] = c.Disk
		}, "containers[1].disk", "below podvisor-images/"},
		{"images chain escapes the image folder", TypePodImagesReady, func(v any) {
			v.(*PodImagesReady).Containers[0].Chain[0] = "[datastore1] podvisor-images/../vm/disk.vmdk"
		}, "containers[0].chain[0]", "below podvisor-images/"},
		{"attached to a port group podvisor does not own", TypePodNetworkAttached, func(v any) {
			v.(*PodNetworkAttached).Attachments[0].PortGroup = "Management Network"
		}, "attachments[0].portGroup", "pv-<network>"},
		{"host ready on a foreign port group", TypeNetworkHostReady, func(v any) { v.(*NetworkHostReady).PortGroup = "VM Network" }, "portGroup", "pv-<network>"},
		{"host ready without port group", TypeNetworkHostReady, func(v any) { v.(*NetworkHostReady).PortGroup = "" }, "portGroup", "Required"},
		{"host failed without host", TypeNetworkHostFailed, func(v any) { v.(*NetworkHostFailed).Host = "" }, "host", "Required"},
		{"host desired digest stale", TypeNetworkHostDesired, func(v any) { v.(*NetworkHostDesired).PortGroups[0].VLAN = 7 }, "digest", "HostStateDigest"},
		{"host applied failure without reason", TypeNetworkHostApplied, func(v any) { v.(*NetworkHostApplied).Failed[0].Reason = "" }, "failed[0].reason", "Required"},
		{"service delete without name", TypeNetworkServiceDeleteRequested, func(v any) { v.(*NetworkServiceDeleteRequested).Name = "" }, "name", "Required"},
		{"clone without clone", TypeNetworkManagementCloned, func(v any) { v.(*NetworkManagementCloned).Clone = "" }, "clone", "Required"},
		{"repaired to a VLAN out of range", TypeNetworkManagementRepaired, func(v any) { v.(*NetworkManagementRepaired).LastGood.VLAN = 5000 }, "lastGood.vlan", "4094"},
		{"management failure without reason", TypeNetworkManagementFailed, func(v any) { v.(*NetworkManagementFailed).Reason = "" }, "reason", "Required"},
		{"rolled back forward", TypeNetworkRolledBack, func(v any) { v.(*NetworkRolledBack).ToVersion = 4 }, "toVersion", "fromVersion-1"},
		{"service type unknown", TypeNetworkServiceDeclared, func(v any) { v.(*NetworkServiceDeclared).Service.Spec.Type = "ntp" }, "service.spec.type", "Unsupported value"},
		{"service without networks", TypeNetworkServiceDeclared, func(v any) { v.(*NetworkServiceDeclared).Service.Spec.Networks = nil }, "service.spec.networks", "Required"},
		{"attached bad nameserver", TypePodNetworkAttached, func(v any) { v.(*PodNetworkAttached).Attachments[0].Nameservers = []string{"x"} }, "attachments[0].nameservers[0]", "IPv4"},
		{"data register bad namespace", TypeNetworkDataRegisterRequested, func(v any) { v.(*NetworkDataRegisterRequested).Namespace = "Bad/ns" }, "namespace", "Invalid value"},
		{"data set bad scope", TypeNetworkDataSetRequested, func(v any) { v.(*NetworkDataSetRequested).Scope.Kind = "vm" }, "scope.kind", "Unsupported value"},
		{"data set value too long", TypeNetworkDataSetRequested, func(v any) { v.(*NetworkDataSetRequested).Value = strings.Repeat("x", 5000) }, "value", "Too long"},
		{"data remove bad port", TypeNetworkDataRemoveRequested, func(v any) { v.(*NetworkDataRemoveRequested).Scope.Name = "web" }, "scope.name", "<network>/<namespace>/<pod>"},
		{"restore version 0", TypeNetworkRestoreRequested, func(v any) { v.(*NetworkRestoreRequested).Version = 0 }, "version", "1 or more"},
		{"network delete name", TypeNetworkDeleteRequested, func(v any) { v.(*NetworkDeleteRequested).Name = "Front End" }, "name", "RFC 1123"},
		{"network deleted name", TypeNetworkDeleted, func(v any) { v.(*NetworkDeleted).Name = "" }, "name", "Required"},
		{"delete rejected bad pod key", TypeNetworkDeleteRejected, func(v any) { v.(*NetworkDeleteRejected).Pods[1] = "cart" }, "pods[1]", "<namespace>/<name>"},
		{"migration id with slash", TypeMigrationRequested, func(v any) { v.(*MigrationRequested).ID = "a/b" }, "id", "letters, digits"},
		{"reserved on the source", TypeMigrationTargetReserved, func(v any) {
			e := v.(*MigrationTargetReserved)
			e.TargetHost = e.SourceHost
		}, "targetHost", "differ from sourceHost"},
		{"migration rejected without message", TypeMigrationRejected, func(v any) { v.(*MigrationRejected).Message = "" }, "message", "Required"},
		{"progress phase", TypeMigrationProgress, func(v any) { v.(*MigrationProgress).Phase = "Flying" }, "phase", "Relocating"},
		{"progress percent", TypeMigrationProgress, func(v any) { v.(*MigrationProgress).Percent = 101 }, "percent", "between 0 and 100"},
		{"completed without uid", TypeMigrationCompleted, func(v any) { v.(*MigrationCompleted).UID = "" }, "uid", "Required"},
		{"migration failed reason", TypeMigrationFailed, func(v any) { v.(*MigrationFailed).Reason = "oops" }, "reason", "CamelCase"},
		{"cancel without pod", TypeMigrationCancelRequested, func(v any) { v.(*MigrationCancelRequested).Pod = "" }, "pod", "Required"},
		{"cancelled namespace", TypeMigrationCancelled, func(v any) { v.(*MigrationCancelled).Namespace = "" }, "namespace", "Required"},
		{"discovered connection state", TypeHostDiscovered, func(v any) { v.(*HostDiscovered).Host.ConnectionState = "up" }, "host.connectionState", "connected"},
		{"updated bad label", TypeHostUpdated, func(v any) { v.(*HostUpdated).Host.Labels = map[string]string{"rack": "r 12"} }, "host.labels[rack]", "valid label"},
		{"updated negative memory", TypeHostUpdated, func(v any) { v.(*HostUpdated).Host.MemoryBytes = -1 }, "host.memoryBytes", "negative"},
		{"lost reason", TypeHostLost, func(v any) { v.(*HostLost).Reason = "" }, "reason", "Required"},
		{"recovered cluster", TypeHostRecovered, func(v any) { v.(*HostRecovered).Cluster = "" }, "cluster", "Required"},
		{"cordoned name", TypeHostCordoned, func(v any) { v.(*HostCordoned).Name = "a b" }, "name", "spaces"},
		{"uncordoned name", TypeHostUncordoned, func(v any) { v.(*HostUncordoned).Name = "" }, "name", "Required"},
		{"cordon request reason", TypeHostCordonRequested, func(v any) { v.(*HostCordonRequested).Reason = "not camel" }, "reason", ""},
		{"uncordon request name", TypeHostUncordonRequested, func(v any) { v.(*HostUncordonRequested).Name = "" }, "name", "Required"},
		{"drain name", TypeHostDrainRequested, func(v any) { v.(*HostDrainRequested).Name = "" }, "name", "Required"},
		{"drained unmovable reason", TypeHostDrained, func(v any) { v.(*HostDrained).Unmovable[0].Reason = "" }, "unmovable[0].reason", "Required"},
		{"guest cluster without version", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.Version = "" }, "guestCluster.spec.version", "Required"},
		{"guest cluster bad version", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.Version = "1.37" }, "guestCluster.spec.version", "v1.37.2"},
		{"guest cluster without control plane", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.ControlPlane.Replicas = 0 }, "guestCluster.spec.controlPlane.replicas", "must be 1 to 5"},
		{"guest cluster with two control planes", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.ControlPlane.Replicas = 2 }, "guestCluster.spec.controlPlane.replicas", "must be odd"},
		{"guest cluster with seven control planes", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.ControlPlane.Replicas = 7 }, "guestCluster.spec.controlPlane.replicas", "must be 1 to 5"},
		{"guest cluster with 17 workers", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.Workers.Replicas = 17 }, "guestCluster.spec.workers.replicas", "must be 0 to 16"},
		{"guest cluster bad namespace", TypeGuestClusterRequested, func(v any) { v.(*GuestClusterRequested).GuestCluster.Spec.Namespaces = []string{"Team_B"} }, "guestCluster.spec.namespaces[0]", "Invalid"},
		{"guest cluster ready without endpoint", TypeGuestClusterReady, func(v any) { v.(*GuestClusterReady).Endpoint = "" }, "endpoint", "Required"},
		{"guest cluster failed reason", TypeGuestClusterFailed, func(v any) { v.(*GuestClusterFailed).Reason = "not camel" }, "reason", "CamelCase"},
		{"guest cluster delete without name", TypeGuestClusterDeleteRequested, func(v any) { v.(*GuestClusterDeleteRequested).Name = "" }, "name", "Required"},
		{"guest cluster deleted negative pods", TypeGuestClusterDeleted, func(v any) { v.(*GuestClusterDeleted).Pods = -1 }, "pods", "negative"},
		{"vm declared without class", TypeVMDeclared, func(v any) { v.(*VMDeclared).VM.Spec.ClassName = "" }, "vm.spec.className", "Required"},
		{"vm declared power state", TypeVMDeclared, func(v any) { v.(*VMDeclared).VM.Spec.PowerState = "On" }, "vm.spec.powerState", "PoweredOff"},
		{"vm declared disk size", TypeVMDeclared, func(v any) { v.(*VMDeclared).VM.Spec.Disks[0].Size = "ten" }, "vm.spec.disks[0].size", "quantity"},
		{"vm declared user data too long", TypeVMDeclared, func(v any) {
			v.(*VMDeclared).VM.Spec.UserData = strings.Repeat("x", MaxVMUserData+1)
		}, "vm.spec.userData", "Too long"},
		{"vm declared name not a label", TypeVMDeclared, func(v any) { v.(*VMDeclared).VM.Metadata.Name = "vm.1" }, "vm.metadata.name", "must not contain dots"},
		{"vm delete without name", TypeVMDeleteRequested, func(v any) { v.(*VMDeleteRequested).Name = "" }, "name", "Required"},
		{"vm migrate without id", TypeVMMigrateRequested, func(v any) { v.(*VMMigrateRequested).ID = "" }, "id", "Required"},
		{"class zero cpus", TypeVMClassDeclared, func(v any) { v.(*VMClassDeclared).Class.Spec.CPUs = 0 }, "class.spec.cpus", "between 1 and 768"},
		{"class memory", TypeVMClassDeclared, func(v any) { v.(*VMClassDeclared).Class.Spec.Memory = "4 GB" }, "class.spec.memory", "quantity"},
		{"class reservation over memory", TypeVMClassDeclared, func(v any) { v.(*VMClassDeclared).Class.Spec.Reservations.Memory = "8Gi" }, "class.spec.reservations.memory", "must not exceed spec.memory"},
		{"class delete name", TypeVMClassDeleteRequested, func(v any) { v.(*VMClassDeleteRequested).Name = "" }, "name", "Required"},
		{"image without source", TypeVMImageDeclared, func(v any) {
			s := &v.(*VMImageDeclared).Image.Spec
			s.ContentLibrary, s.OCI = nil, ""
		}, "image.spec", "contentLibrary"},
		{"image library item", TypeVMImageDeclared, func(v any) { v.(*VMImageDeclared).Image.Spec.ContentLibrary.Item = "" }, "image.spec.contentLibrary.item", "Required"},
		{"image delete name", TypeVMImageDeleteRequested, func(v any) { v.(*VMImageDeleteRequested).Name = "" }, "name", "Required"},
		{"vm rejected kind", TypeVMRejected, func(v any) { v.(*VMRejected).Kind = "Pod" }, "kind", "VirtualMachineClass"},
		{"vm accepted defaults", TypeVMAccepted, func(v any) { v.(*VMAccepted).Spec.PowerState = "" }, "spec.powerState", "defaults"},
		{"vm accepted size", TypeVMAccepted, func(v any) { v.(*VMAccepted).Size.MemoryMiB = 4097 }, "size.memoryMiB", "multiple of 4"},
		{"vm scheduled host", TypeVMScheduled, func(v any) { v.(*VMScheduled).Host = "" }, "host", "Required"},
		{"vm unschedulable message", TypeVMUnschedulable, func(v any) { v.(*VMUnschedulable).Message = "" }, "message", "Required"},
		{"vm attached bad ip", TypeVMNetworkAttached, func(v any) { v.(*VMNetworkAttached).Attachments[0].IP = "x" }, "attachments[0].ip", "IPv4"},
		{"vm network failed reason", TypeVMNetworkFailed, func(v any) { v.(*VMNetworkFailed).Reason = "no" }, "reason", "CamelCase"},
		{"vm status phase", TypeVMStatusChanged, func(v any) { v.(*VMStatusChanged).Status.Phase = "Up" }, "status.phase", "Ready"},
		{"vm status interface mac", TypeVMStatusChanged, func(v any) { v.(*VMStatusChanged).Status.Network.Interfaces[1].MACAddr = "" }, "status.network.interfaces[1].macAddr", "Required"},
		{"vm status interface allocated without prefix", TypeVMStatusChanged, func(v any) {
			v.(*VMStatusChanged).Status.Network.Interfaces[0].Allocated = "10.244.0.12"
		}, "status.network.interfaces[0].allocated", "prefix length"},
		{"vm status interface reason", TypeVMStatusChanged, func(v any) { v.(*VMStatusChanged).Status.Network.Interfaces[1].Reason = "Later" }, "status.network.interfaces[1].reason", "RebootRequired"},
		{"vm status configured interface with a reason", TypeVMStatusChanged, func(v any) {
			v.(*VMStatusChanged).Status.Network.Interfaces[0].Reason = VMGuestNetworkRebootRequired
		}, "status.network.interfaces[0].reason", "must be empty"},
		{"vm status guest boot address", TypeVMStatusChanged, func(v any) {
			v.(*VMStatusChanged).Status.Network.GuestBoot.Addresses["00:50:56:3f:10:12"] = "x/16"
		}, "status.network.guestBoot.addresses[00:50:56:3f:10:12]", "IPv4"},
		{"vm target reserved host", TypeVMMigrationTargetReserved, func(v any) { v.(*VMMigrationTargetReserved).TargetHost = "" }, "targetHost", "Required"},
		{"vm admitted host", TypeVMMigrationAdmitted, func(v any) { v.(*VMMigrationAdmitted).TargetHost = "" }, "targetHost", "Required"},
		{"vm migrated failure without message", TypeVMMigrated, func(v any) { v.(*VMMigrated).Reason = "RelocateFailed" }, "message", "Required"},
		{"vm evicted reason", TypeVMEvicted, func(v any) { v.(*VMEvicted).Reason = "" }, "reason", "Required"},
		{"vm deleted ip", TypeVMDeleted, func(v any) { v.(*VMDeleted).IPs[0].IP = "1.2.3" }, "ips[0].ip", "IPv4"},
		{"check without id", TypeGuestClusterCheckRequested, func(v any) { v.(*GuestClusterCheckRequested).ID = "" }, "id", "Required"},
		{"compatibility verdict", TypeGuestClusterCompatibility, func(v any) { v.(*GuestClusterCompatibility).Compatible = true }, "compatible", "must be false"},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.ceType] = true
		t.Run(tt.name, func(t *testing.T) {
			v := loadSample(t, tt.ceType)
			tt.break_(v)
			err := v.(Payload).Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want a *ValidationError", err)
			}
			if ve.Field() != tt.field {
				t.Errorf("first field %q, want %q (error: %v)", ve.Field(), tt.field, err)
			}
			if !strings.Contains(err.Error(), tt.field+": ") || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("message %q does not name %s with %q", err, tt.field, tt.reason)
			}
		})
	}
	for _, k := range Kinds() {
		if !covered[k.Type] {
			t.Errorf("no validation case for %s", k.Type)
		}
	}
}

// TestObjectKeys pins the keys producers use as the CloudEvent subject.
func TestObjectKeys(t *testing.T) {
	want := map[string]string{
		TypePodRequested:          "default/web", // the sample has no namespace
		TypePodAccepted:           "shop/web",
		TypeImagePulled:           loadSample(t, TypeImagePulled).(*ImagePulled).Digest + "@" + loadSample(t, TypeImagePulled).(*ImagePulled).Datastore,
		TypeNetworkDeclared:       "frontend",
		TypeMigrationRequested:    "shop/web",
		TypeHostDrained:           "DC0_C0_H3",
		TypeHostUpdated:           "DC0_C0_H3",
		TypeNetworkRolledBack:     "frontend",
		TypePodDeleteRequested:    "shop/web",
		TypeMigrationProgress:     "shop/web",
		TypeNetworkDeleteRejected: "frontend",
		TypeVMDeclared:            "team-a/vm1",
		TypeVMClassDeclared:       "small",
		TypeVMImageDeclared:       "vmos",
		TypeVMStatusChanged:       "team-a/vm1",
	}
	for ceType, key := range want {
		if got := loadSample(t, ceType).(Payload).ObjectKey(); got != key {
			t.Errorf("%s: ObjectKey = %q, want %q", ceType, got, key)
		}
	}
}
