package cli

import (
	"strconv"
	"strings"
	"time"

	"github.com/podvisor/podvisor/events"
)

func init() {
	registerResource(&resource{
		names:      []string{"vms", "vm", "virtualmachines", "virtualmachine"},
		kind:       events.KindVirtualMachine,
		bucket:     events.BucketVMs,
		namespaced: true,
		header:     []string{"NAME", "PHASE", "POWER", "HOST", "IP", "CLASS", "IMAGE", "AGE"},
		wideHeader: []string{"VM", "CPUS", "MEMORY", "GENERATION", "NETWORKS"},
		wide: func(r record) []string {
			v := &r.(*vmRow).VMRecord
			return []string{dash(v.Status.VM), strconv.Itoa(int(v.Size.CPUs)), strconv.FormatInt(v.Size.MemoryMiB, 10) + "Mi",
				strconv.FormatInt(v.Generation, 10), strings.Join(v.Spec.EffectiveNetworks(), ",")}
		},
		decode: decodeRow[vmRow],
	})
	registerResource(&resource{
		names:  []string{"vmclasses", "vmclass", "virtualmachineclasses", "virtualmachineclass"},
		kind:   events.KindVirtualMachineClass,
		bucket: events.BucketVMClasses,
		header: []string{"NAME", "CPUS", "MEMORY", "CPU RESERVATION", "MEMORY RESERVATION", "AGE"},
		decode: decodeRow[vmClassRow],
	})
	registerResource(&resource{
		names:  []string{"vmimages", "vmimage", "virtualmachineimages", "virtualmachineimage"},
		kind:   events.KindVirtualMachineImage,
		bucket: events.BucketVMImages,
		header: []string{"NAME", "OCI", "CONTENT LIBRARY", "READY", "AGE"},
		decode: decodeRow[vmImageRow],
	})
}

type vmRow struct{ events.VMRecord }

func (v *vmRow) Namespace() string { return v.VMRecord.Namespace }
func (v *vmRow) Name() string      { return v.VMRecord.Name }

// Object is the VirtualMachine with its status, as it can be applied again.
func (v *vmRow) Object() any { return v.VMRecord.Object() }

func (v *vmRow) Row(now time.Time) []string {
	r := &v.VMRecord
	return []string{r.Name, dash(r.Status.Phase), dash(r.Status.PowerState), dash(r.Status.Host),
		dash(strings.Join(r.Status.IPs, ",")), r.Spec.ClassName, r.Spec.ImageName, age(r.CreatedAt, now)}
}

type vmClassRow struct{ events.VMClassRecord }

func (c *vmClassRow) Namespace() string { return "" }
func (c *vmClassRow) Name() string      { return c.Class.Metadata.Name }
func (c *vmClassRow) Object() any       { return c.Class }

func (c *vmClassRow) Row(now time.Time) []string {
	s := c.Class.Spec
	cpuRes := ""
	if s.Reservations.CPUMHz > 0 {
		cpuRes = strconv.FormatInt(s.Reservations.CPUMHz, 10) + "MHz"
	}
	return []string{c.Class.Metadata.Name, strconv.Itoa(s.CPUs), s.Memory, dash(cpuRes), dash(s.Reservations.Memory), age(c.UpdatedAt, now)}
}

type vmImageRow struct{ events.VMImageRecord }

func (m *vmImageRow) Namespace() string { return "" }
func (m *vmImageRow) Name() string      { return m.Image.Metadata.Name }
func (m *vmImageRow) Object() any       { return m.VMImageRecord }

func (m *vmImageRow) Row(now time.Time) []string {
	lib := ""
	if cl := m.Image.Spec.ContentLibrary; cl != nil {
		lib = cl.Library + "/" + cl.Item
	}
	ready := strconv.FormatBool(m.Ready)
	if m.Reason != "" {
		ready += " (" + m.Reason + ")"
	}
	return []string{m.Image.Metadata.Name, dash(m.Image.Spec.OCI), dash(lib), ready, age(m.UpdatedAt, now)}
}
