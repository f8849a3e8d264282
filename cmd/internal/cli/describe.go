package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/vmware/govmomi/vim25/mo"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/bytesize"
	"github.com/podvisor/podvisor/shared/vsphere"
)

// describe prints one object for a person, as kubectl describe does: its
// record laid out as fields, then the events about it, oldest first.

func newDescribeCmd(g *globals) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "describe pod|host|network|networkservice|vm|guestcluster NAME",
		Short: "Show one pod, host, network, network service, native VM, pod VM or guest cluster in detail, with its events",
		Long: `describe prints an object's record as fields and lists the events about it (the CloudEvents
whose subject is the object), oldest first.

describe vm NAME shows the native VM (VirtualMachine) of that name in the namespace (-n): its class
and size, image, power state, host, NICs and conditions, then its events. When there is none, NAME
is a pod VM: the pod's name, or the VM's own name (pv-<uid>); describe then reads that VM from
vCenter (GOVC_URL, or the env file of podvisor up) and shows its power state, host, hardware and
guestinfo beside the pod it runs.

describe guestcluster NAME (or gc) shows the guest cluster of that name in the namespace (-n): its
version, phase and why, endpoint, conditions (Compatible, WorkersAccepted), then each control-plane
VM and worker node with its state; a worker whose VM declaration was refused shows the refusal's
reason, field and message.`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeNamesOf(g, "pod", "host", "network", "networkservice", "vm", "guestcluster"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			kind, name := args[0], args[1]
			return g.withBus(ctx, func(ctx context.Context, b *bus.Bus) error {
				switch kind {
				case "pod", "pods", "po":
					return describePod(ctx, b, g.stdout, namespace, name)
				case "host", "hosts", "hs":
					return describeHost(ctx, b, g.stdout, name)
				case "network", "networks", "net":
					return describeNetwork(ctx, b, g.stdout, name)
				case "networkservice", "networkservices", "netsvc":
					return describeNetworkService(ctx, b, g.stdout, name)
				case "vm", "vms":
					// A native VM of that name first; otherwise the pod VM of a
					// pod (or pv-<uid>).
					if found, err := describeNativeVM(ctx, b, g.stdout, namespace, name); found || err != nil {
						return err
					}
					return describeVM(ctx, b, g, namespace, name)
				case "guestcluster", "guestclusters", "gc":
					return describeGuestCluster(ctx, b, g.stdout, namespace, name)
				}
				return usageError("cannot describe %q: want pod, host, network, networkservice, vm or guestcluster", kind)
			})
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace of the pod or VM, or of the guest cluster")
	return cmd
}

// fields writes aligned "Name:  value" lines.
type fields struct{ tw *tabwriter.Writer }

func newFields(w io.Writer) *fields { return &fields{tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)} }

func (f *fields) add(name string, value any) {
	s := fmt.Sprint(value)
	if s == "" {
		s = "<none>"
	}
	fmt.Fprintf(f.tw, "%s:\t%s\n", name, s)
}

// status adds a status field, its reason in parentheses after it, and the
// message that explains it when there is one.
func (f *fields) status(name, status, reason, message string) {
	if reason != "" {
		status += " (" + reason + ")"
	}
	f.add(name, status)
	if message != "" {
		f.add("Message", message)
	}
}

func (f *fields) section(title string) { fmt.Fprintf(f.tw, "%s:\n", title) }

func (f *fields) row(cells ...string) { fmt.Fprintf(f.tw, "  %s\n", strings.Join(cells, "\t")) }

func (f *fields) flush() { f.tw.Flush() }

func describePod(ctx context.Context, b *bus.Bus, out io.Writer, ns, name string) error {
	var r events.PodRecord
	if err := getRecord(ctx, b, events.BucketPods, events.PodRecordKey(ns, name), "pod "+events.PodKey(ns, name), &r); err != nil {
		return err
	}
	printPod(out, &r)
	return describeEvents(ctx, b, out, events.PodKey(ns, name), r.CreatedAt.Add(-time.Second), events.StreamPods, events.StreamMigrations)
}

// printPod lays out a pod's record as kubectl describe pod does: its
// placement, then each init container and container with its state, the
// last state it ended in, readiness and restarts, then its networks and
// conditions.
func printPod(out io.Writer, r *events.PodRecord) {
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("Namespace", r.Namespace)
	f.add("UID", r.UID)
	f.list("Labels", mapLines(r.Pod.Labels, "="))
	f.list("Annotations", mapLines(r.Pod.Annotations, ": "))
	f.add("Created", r.CreatedAt.Format(time.RFC3339))
	f.status("Phase", r.Phase, podReason(r), r.Message)
	f.add("Host", r.Host)
	f.add("Cluster", r.Cluster)
	f.add("IP", r.IP)
	f.add("VM", podVM(r))
	f.add("Size", fmt.Sprintf("%d vCPU (%dm requested), %d MiB", r.Size.VCPUs, r.Size.CPUMilli, r.Size.MemoryMiB))
	// KubernetesPod gives a status per container of the spec, in order,
	// waiting with the pod's reason where the guest reported none.
	st := r.KubernetesPod().Status
	if len(st.InitContainerStatuses) > 0 {
		f.section("Init Containers")
		for _, cs := range st.InitContainerStatuses {
			f.container(r, cs)
		}
	}
	f.section("Containers")
	for _, cs := range st.ContainerStatuses {
		f.container(r, cs)
	}
	f.section("Networks")
	for _, a := range r.Attachments {
		f.row(a.Network, a.PortGroup, fmt.Sprintf("%s/%d", a.IP, a.PrefixLength), dash(a.MAC))
	}
	f.section("Conditions")
	for _, c := range r.Conditions {
		f.row(c.Type, c.Status, c.Time.Format(time.TimeOnly), dash(c.Reason), c.Message)
	}
	f.flush()
}

// container adds one container of a pod: image, state, last state, ready
// and restart count, as kubectl describe pod shows them.
func (f *fields) container(r *events.PodRecord, cs corev1.ContainerStatus) {
	fmt.Fprintf(f.tw, "  %s:\n", cs.Name)
	f.add("    Image", cs.Image)
	f.add("    Image ID", cs.ImageID)
	for _, im := range r.Images {
		if im.Container == cs.Name {
			f.add("    Layer Disks", len(im.Chain))
		}
	}
	f.containerState("State", cs.State)
	if s := cs.LastTerminationState; s.Waiting != nil || s.Running != nil || s.Terminated != nil {
		f.containerState("Last State", s)
	}
	f.add("    Ready", trueFalse(cs.Ready))
	f.add("    Restart Count", cs.RestartCount)
}

// containerState adds a container's state: Waiting with its reason and
// message, Running since when, or Terminated with reason, exit code and
// times.
func (f *fields) containerState(name string, s corev1.ContainerState) {
	const in = "    "
	optional := func(name, value string) {
		if value != "" {
			f.add(in+"  "+name, value)
		}
	}
	switch {
	case s.Running != nil:
		f.add(in+name, "Running")
		f.add(in+"  Started", kubeTime(s.Running.StartedAt))
	case s.Terminated != nil:
		t := s.Terminated
		f.add(in+name, "Terminated")
		optional("Reason", t.Reason)
		optional("Message", oneLine(t.Message))
		f.add(in+"  Exit Code", t.ExitCode)
		if t.Signal != 0 {
			f.add(in+"  Signal", t.Signal)
		}
		f.add(in+"  Started", kubeTime(t.StartedAt))
		f.add(in+"  Finished", kubeTime(t.FinishedAt))
	default:
		f.add(in+name, "Waiting")
		if s.Waiting != nil {
			optional("Reason", s.Waiting.Reason)
			optional("Message", oneLine(s.Waiting.Message))
		}
	}
}

// list adds a field of several values, one a line, aligned under the first.
func (f *fields) list(name string, values []string) {
	if len(values) == 0 {
		f.add(name, "")
		return
	}
	for i, v := range values {
		if i == 0 {
			f.add(name, v)
		} else {
			fmt.Fprintf(f.tw, "\t%s\n", v)
		}
	}
}

// oneLine keeps a value on its line: newlines show as \n.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", `\n`) }

// kubeTime is a status time as describe prints times; "" when unset.
func kubeTime(t metav1.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
}

// trueFalse spells a boolean as Kubernetes' condition statuses do.
func trueFalse(b bool) string {
	if b {
		return events.ConditionTrue
	}
	return events.ConditionFalse
}

func describeHost(ctx context.Context, b *bus.Bus, out io.Writer, name string) error {
	var r events.HostRecord
	if err := getRecord(ctx, b, events.BucketHosts, events.HostRecordKey(name), "host "+name, &r); err != nil {
		return err
	}
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("Cluster", r.Cluster)
	f.add("State", r.State())
	f.add("Connection", r.ConnectionState)
	f.add("Labels", labelString(r.Labels))
	f.add("CPU", fmt.Sprintf("%.1f of %.0f cores allocated (%d × %d MHz)", float64(r.AllocatedCPUMilli)/1000, float64(r.CPUCapacityMilli)/1000, r.CPUCores, r.CPUMHz))
	f.add("Memory", fmt.Sprintf("%s of %s allocated", bytesize.Short(r.AllocatedMemoryBytes), bytesize.Short(r.MemoryCapacityBytes)))
	f.add("Pods", r.Pods)
	f.add("Datastores", strings.Join(r.Datastores, ", "))
	f.add("Port groups", strings.Join(r.Networks, ", "))
	f.add("Pod networks", strings.Join(r.PodNetworks, ", "))
	f.section("Pods on the host")
	pods, err := podsOn(ctx, b, name)
	if err != nil {
		return err
	}
	for _, p := range pods {
		f.row(events.PodKey(p.Namespace, p.Name), p.Phase, dash(p.IP))
	}
	f.flush()
	return describeEvents(ctx, b, out, name, time.Time{}, events.StreamHosts)
}

// podsOn lists the pod records placed on a host.
func podsOn(ctx context.Context, b *bus.Bus, host string) ([]events.PodRecord, error) {
	pods, err := readRecords[events.PodRecord](ctx, b, events.BucketPods)
	if err != nil {
		return nil, err
	}
	var out []events.PodRecord
	for _, r := range pods {
		if r.Host == host {
			out = append(out, *r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Namespace+"/"+out[i].Name < out[j].Namespace+"/"+out[j].Name })
	return out, nil
}

func describeNetwork(ctx context.Context, b *bus.Bus, out io.Writer, name string) error {
	var r events.NetworkRecord
	if err := getRecord(ctx, b, events.BucketNetworks, events.NetworkRecordKey(name), "network "+name, &r); err != nil {
		return err
	}
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("VLAN", r.Spec.VLAN)
	f.add("CIDR", r.Spec.CIDR)
	f.add("Version", r.Version)
	f.status("Status", r.Status, r.Reason, r.Message)
	f.add("Port group", r.PortGroup)
	f.add("Switch", r.Switch)
	f.add("IPs used", r.IPsUsed)
	f.add("Hosts ready", fmt.Sprintf("%d of %d in scope", r.HostsReady, r.HostsInScope))
	f.section("Hosts")
	hosts, err := networkHosts(ctx, b, name)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		f.row(networkHostCells(h)...)
	}
	f.flush()
	return describeEvents(ctx, b, out, name, time.Time{}, events.StreamNetworks)
}

// networkHostCells is one host's row under a network's Hosts: the version
// it carries, its state with the reason and message when it failed, and
// when it was observed so.
func networkHostCells(h events.NetworkHostRecord) []string {
	state := h.State
	if h.Reason != "" {
		state += " (" + h.Reason + ")"
	}
	cells := []string{h.Host, fmt.Sprintf("version %d", h.Version), state, "updated " + h.UpdatedAt.Format(time.RFC3339)}
	if h.Message != "" {
		cells = append(cells, oneLine(h.Message))
	}
	return cells
}

// networkHosts reads what each host in a network's scope carries of it
// (one key per host in net-realized), sorted by host.
func networkHosts(ctx context.Context, b *bus.Bus, network string) ([]events.NetworkHostRecord, error) {
	kv, err := b.KV(ctx, events.BucketNetRealized)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil // network-config has not started yet
	}
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, events.NetworkHostKeys(network), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var out []events.NetworkHostRecord
	for e := range w.Updates() {
		if e == nil {
			break // the current values are all in
		}
		var h events.NetworkHostRecord
		if err := json.Unmarshal(e.Value(), &h); err != nil {
			return nil, fmt.Errorf("network %s: %s: %w", network, e.Key(), err)
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out, nil
}

// describeNativeVM shows a native VM's record and events; found is false
// when there is no VirtualMachine of that name.
func describeNativeVM(ctx context.Context, b *bus.Bus, out io.Writer, ns, name string) (found bool, err error) {
	kv, err := b.KV(ctx, events.BucketVMs)
	if err != nil {
		return false, err
	}
	e, err := kv.Get(ctx, events.VMRecordKey(ns, name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var r events.VMRecord
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return true, fmt.Errorf("vm record: %w", err)
	}
	f := newFields(out)
	f.add("Name", r.Name)
	f.add("Namespace", r.Namespace)
	f.add("UID", r.UID)
	f.add("Generation", r.Generation)
	f.add("Class", fmt.Sprintf("%s (%d vCPU, %d MiB)", r.Spec.ClassName, r.Size.CPUs, r.Size.MemoryMiB))
	f.add("Image", r.Spec.ImageName)
	f.add("Power state", fmt.Sprintf("%s (declared %s)", dash(r.Status.PowerState), r.Spec.PowerState))
	f.add("Phase", r.Status.Phase)
	f.add("Host", dash(r.Status.Host))
	f.add("vCenter VM", dash(r.Status.VM)+" "+events.NativeVMName(r.UID))
	f.section("NICs")
	for _, n := range r.Status.NICs {
		f.row(n.Network, fmt.Sprintf("%s/%d mac %s port group %s%s", n.IP, n.PrefixLength, n.MAC, n.PortGroup, guestNICState(&r, n.MAC)))
	}
	f.section("Conditions")
	for _, c := range r.Status.Conditions {
		f.row(c.Type, strings.TrimSpace(c.Status+" "+c.Reason+" "+c.Message))
	}
	f.flush()
	return true, describeEvents(ctx, b, out, events.PodKey(ns, name), time.Time{}, events.StreamVMs)
}

// guestNICState says whether the VM's guest has the NIC of that MAC
// configured (status.network.interfaces), "" when the record does not say.
func guestNICState(r *events.VMRecord, mac string) string {
	for _, in := range r.Status.Network.Interfaces {
		if !strings.EqualFold(in.MACAddr, mac) {
			continue
		}
		if in.Reason == "" {
			return ", configured in the guest"
		}
		return ", not configured in the guest (" + in.Reason + ")"
	}
	return ""
}

// describeVM shows a pod VM as vCenter has it, beside the pod it runs.
func describeVM(ctx context.Context, b *bus.Bus, g *globals, ns, name string) error {
	vmName := name
	var pod *events.PodRecord
	if !strings.HasPrefix(name, "pv-") {
		var r events.PodRecord
		if err := getRecord(ctx, b, events.BucketPods, events.PodRecordKey(ns, name), "pod "+events.PodKey(ns, name), &r); err != nil {
			return err
		}
		if r.VMName == "" {
			return &exitError{code: 1, err: fmt.Errorf("pod %s has no VM yet (phase %s)", events.PodKey(ns, name), r.Phase)}
		}
		vmName, pod = r.VMName, &r
	}
	url, err := g.endpoint("", "GOVC_URL")
	if err != nil {
		return err
	}
	cfg := vsphere.Config{URL: url, Insecure: os.Getenv("GOVC_INSECURE") != "0", Datacenter: os.Getenv("GOVC_DATACENTER")}
	sess, err := vsphere.Connect(ctx, cfg)
	if err != nil {
		return fmt.Errorf("vCenter: %w", err)
	}
	defer sess.Close(context.WithoutCancel(ctx))
	vm, err := sess.FindVM(ctx, vmName)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("vm %s: %w", vmName, err)}
	}
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"name", "config.hardware", "config.extraConfig", "runtime.powerState", "runtime.host"}, &m); err != nil {
		return fmt.Errorf("vm %s: %w", vmName, err)
	}
	host := ""
	if m.Runtime.Host != nil {
		var h mo.HostSystem
		if err := vm.Properties(ctx, *m.Runtime.Host, []string{"name"}, &h); err == nil {
			host = h.Name
		}
	}
	f := newFields(g.stdout)
	f.add("Name", m.Name)
	f.add("Ref", vm.Reference().Value)
	f.add("Power", m.Runtime.PowerState)
	f.add("Host", host)
	if m.Config != nil {
		f.add("Hardware", fmt.Sprintf("%d vCPU, %d MiB", m.Config.Hardware.NumCPU, m.Config.Hardware.MemoryMB))
		f.section("Guestinfo")
		var keys []string
		vals := map[string]string{}
		for _, o := range m.Config.ExtraConfig {
			if ov := o.GetOptionValue(); ov != nil && strings.HasPrefix(ov.Key, "guestinfo.podvisor.") {
				keys = append(keys, ov.Key)
				v := fmt.Sprint(ov.Value)
				if len(v) > 80 {
					v = v[:77] + "..."
				}
				vals[ov.Key] = v
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			f.row(k, vals[k])
		}
	}
	if pod != nil {
		f.add("Pod", events.PodKey(pod.Namespace, pod.Name)+" ("+pod.Phase+")")
	}
	f.flush()
	return nil
}

// objectEvents reads the events whose CloudEvent subject is key from the
// streams, oldest first, starting at since (zero: the whole stream).
func objectEvents(ctx context.Context, b *bus.Bus, key string, since time.Time, streams ...string) ([]event.Event, error) {
	var out []event.Event
	for _, name := range streams {
		s, err := b.JetStream().Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		last := s.CachedInfo().State.LastSeq
		if last == 0 {
			continue
		}
		cfg := jetstream.OrderedConsumerConfig{}
		if !since.IsZero() {
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
		}
		c, err := s.OrderedConsumer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
	read:
		for {
			batch, err := c.Fetch(500, jetstream.FetchMaxWait(500*time.Millisecond))
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", name, err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				if ev, err := bus.DecodeMessage(m); err == nil && ev.Subject() == key {
					out = append(out, ev)
				}
				if md, err := m.Metadata(); err == nil && md.Sequence.Stream >= last {
					break read
				}
			}
			if n == 0 {
				break
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time().Before(out[j].Time()) })
	return out, nil
}

// describeEvents prints describe's Events section: the events of key in
// the streams since since (objectEvents).
func describeEvents(ctx context.Context, b *bus.Bus, out io.Writer, key string, since time.Time, streams ...string) error {
	evs, err := objectEvents(ctx, b, key, since, streams...)
	if err != nil {
		return err
	}
	printObjectEvents(out, evs)
	return nil
}

// printObjectEvents prints kubectl describe's Events section.
func printObjectEvents(out io.Writer, evs []event.Event) {
	if len(evs) == 0 {
		fmt.Fprintln(out, "Events:\t<none>")
		return
	}
	fmt.Fprintln(out, "Events:")
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  TIME\tTYPE\tFROM\tMESSAGE")
	for _, ev := range evs {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", ev.Time().Local().Format("15:04:05.000"), shortType(ev.Type()), ev.Source(), eventSummary(ev))
	}
	tw.Flush()
}

// eventSummary picks what a person reads first from an event's data.
func eventSummary(ev event.Event) string {
	dec := json.NewDecoder(bytes.NewReader(ev.Data()))
	dec.UseNumber() // 17179869184, not 1.7179869184e+10
	var d map[string]any
	if dec.Decode(&d) != nil {
		return ""
	}
	var parts []string
	for _, k := range []string{"host", "targetHost", "ip", "vm", "reason", "message", "percent"} {
		if v, ok := d[k]; ok {
			if s := summaryValue(v, true); s != "" {
				parts = append(parts, k+"="+s)
			}
		}
	}
	return strings.Join(parts, " ")
}

// summaryValue renders a value of an event's data on one line: an object
// (host.updated's host, vm.declared's vm) as {key=value ...} sorted by
// key, a list as [a b], and text on one line; text inside an object is
// cut at 60 characters (user data, certificates), top-level text (a
// reason's message) never. Empty values inside an object are left out.
func summaryValue(v any, top bool) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		s := oneLine(v)
		if r := []rune(s); !top && len(r) > 60 {
			s = string(r[:57]) + "..."
		}
		return s
	case map[string]any:
		parts := make([]string, 0, len(v))
		for _, k := range slices.Sorted(maps.Keys(v)) {
			if s := summaryValue(v[k], false); s != "" {
				parts = append(parts, k+"="+s)
			}
		}
		if len(parts) == 0 {
			return ""
		}
		return "{" + strings.Join(parts, " ") + "}"
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			parts = append(parts, summaryValue(e, false))
		}
		if len(parts) == 0 {
			return ""
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprint(v)
}
