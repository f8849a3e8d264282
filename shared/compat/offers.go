package compat

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/events"
)

// InfrastructureVersion is the version of podvisor's infrastructure
// offers; it moves with what the services offer.
const InfrastructureVersion = "0.19.0"

// InfrastructureOffers is what podvisor's services offer guest clusters.
func InfrastructureOffers() Document {
	offers := map[string]string{
		"podvisor.io/v1alpha1/VirtualMachine":      Present,
		"podvisor.io/v1alpha1/VirtualMachineClass": Present,
		"podvisor.io/v1alpha1/VirtualMachineImage": Present,
		"podvisor.io/v1alpha1/Network":             Present,
		"v1/Pod":                                   Present,
		"podvm.agent":                              "1",
		"cloud-init.datasource/vmware":             Present,
		"scheduler.ledger.shared":                  Present, // pods and VMs in one ledger
		"migration.vmotion":                        Present,
	}
	for _, k := range events.Kinds() {
		// Every event domain the bus carries, at its version.
		d := strings.TrimPrefix(k.Type, "io.podvisor.")
		if i := strings.Index(d, "."); i > 0 {
			offers["events/"+d[:i]] = k.Type[strings.LastIndex(k.Type, ".v")+2:]
		}
	}
	return Document{APIVersion: APIVersion, Kind: KindOffers, Provider: ProviderInfrastructure, Name: "podvisor",
		Version: InfrastructureVersion, Offers: offers}
}

// SDDCOffers reads what the vCenter offers: its product, version, build,
// API version, and each manager its ServiceContent advertises as
// vsphere.api.feature/<manager> (lower camel case, as the API names them).
func SDDCOffers(ctx context.Context, vc *vim25.Client) (Document, error) {
	sc := vc.ServiceContent
	about := sc.About
	if about.Version == "" {
		return Document{}, fmt.Errorf("vCenter reports no version (about: %+v)", about)
	}
	offers := map[string]string{
		"vcenter.version": about.Version,
		"vcenter.build":   about.Build,
		"vsphere.api":     about.ApiVersion,
		"vcenter.product": strings.ReplaceAll(about.Name, " ", "-"),
		"vcenter.type":    about.ApiType,
	}
	v := reflect.ValueOf(sc)
	t := v.Type()
	for i := range t.NumField() {
		f := v.Field(i)
		if f.Type() != reflect.TypeOf(&types.ManagedObjectReference{}) || f.IsNil() {
			continue
		}
		name := t.Field(i).Name
		offers["vsphere.api.feature/"+strings.ToLower(name[:1])+name[1:]] = Present
	}
	return Document{APIVersion: APIVersion, Kind: KindOffers, Provider: ProviderSDDC,
		Name: strings.ReplaceAll(about.Name, " ", "-"), Version: about.Version, Offers: offers}, nil
}

// guestClusterRequires are the requirements of each guest cluster minor
// version podvisor knows (the patch level inherits its minor's).
var guestClusterRequires = map[string][]Requirement{
	"v1.37": {
		{Provider: ProviderSDDC, Name: "vcenter.version", Version: ">=7.0"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/ovfManager"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/eventManager"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/vStorageObjectManager"},
		{Provider: ProviderInfrastructure, Name: "podvisor.io/v1alpha1/VirtualMachine"},
		{Provider: ProviderInfrastructure, Name: "cloud-init.datasource/vmware"},
		{Provider: ProviderInfrastructure, Name: "events/vm", Version: ">=1"},
		{Provider: ProviderInfrastructure, Name: "events/pod", Version: ">=1"},
	},
	// v1.38 guest clusters keep their control plane's secrets encrypted
	// by the vSphere key provider: a vCenter without a crypto manager and
	// site information (vSphere 8.0 U3) cannot host them.
	"v1.38": {
		{Provider: ProviderSDDC, Name: "vcenter.version", Version: ">=8.0.3"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/cryptoManager"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/siteInfoManager"},
		{Provider: ProviderSDDC, Name: "vsphere.api.feature/ovfManager"},
		{Provider: ProviderInfrastructure, Name: "podvisor.io/v1alpha1/VirtualMachine"},
		{Provider: ProviderInfrastructure, Name: "events/vm", Version: ">=1"},
	},
}

// GuestClusterVersions lists the versions (minor lines) with known
// requirements.
func GuestClusterVersions() []string {
	var out []string
	for v := range guestClusterRequires {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// GuestClusterRequires is the Requires document of a guest cluster
// version ("v1.37.2"); an unknown version is an error naming the known
// ones.
func GuestClusterRequires(version string) (Document, error) {
	minor := version
	if parts := strings.Split(strings.TrimPrefix(version, "v"), "."); len(parts) >= 2 {
		minor = "v" + parts[0] + "." + parts[1]
	}
	reqs, ok := guestClusterRequires[minor]
	if !ok {
		return Document{}, fmt.Errorf("guest cluster version %q: no requirements known; known versions: %s", version, strings.Join(GuestClusterVersions(), ", "))
	}
	return Document{APIVersion: APIVersion, Kind: KindRequires, Provider: ProviderGuestCluster, Name: "kubernetes",
		Version: version, Requires: append([]Requirement(nil), reqs...)}, nil
}
