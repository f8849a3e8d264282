package provisioner

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/services/provisioner/templates"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/simtest"
	"github.com/podvisor/podvisor/shared/testenv"
)

// With a channel address (a host agent's concentrator), every pod VM gets
// its console on COM1 in a file of its own and a network serial port on
// COM2 that its host connects to the address; its agent is told to talk
// on that port, and its spec carries the pod's channel token, which the
// concentrator checks with the same key.
//
// A telnet:// address names the concentrator as the ports' proxy (vSPC): the
// port is the proxy's, direction server, which vSphere moves with the VM in
// a vMotion.
func TestPodVMsTalkOnANetworkSerialPort(t *testing.T) {
	for _, uri := range []string{"tcp://concentrator.example:7041", "telnets://concentrator.example:7041"} {
		t.Run(uri, func(t *testing.T) { testNetworkSerialPort(t, uri) })
	}
}

func testNetworkSerialPort(t *testing.T, uri string) {
	e := newEnv(t)
	key := []byte(strings.Repeat("c", guestchannel.ChannelKeySize))
	keyFile := filepath.Join(t.TempDir(), "channel.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.ChannelURI, cfg.ChannelKeyFile = uri, keyFile
	e.start(cfg)
	rec, run := e.provision(testPod("serial"), e.DC.Hosts()[0].Name)

	var vm mo.VirtualMachine
	if err := e.vc.RetrieveOne(context.Background(), vmRef(run.VM), []string{"config.hardware.device", "config.extraConfig"}, &vm); err != nil {
		t.Fatal(err)
	}
	ports := map[int32]types.BaseVirtualDeviceBackingInfo{}
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualSerialPort)(nil)) {
		p := d.(*types.VirtualSerialPort)
		if p.UnitNumber == nil || !p.YieldOnPoll {
			t.Errorf("serial port %+v: want a unit and yieldOnPoll", p)
			continue
		}
		ports[*p.UnitNumber] = p.Backing
	}
	if b, ok := ports[0].(*types.VirtualSerialPortFileBackingInfo); !ok || !strings.HasSuffix(b.FileName, " "+"pv-"+rec.UID+"/console.log") {
		t.Errorf("COM1 backing %#v, want the console in %s/console.log", ports[0], "pv-"+rec.UID)
	}
	b, ok := ports[1].(*types.VirtualSerialPortURIBackingInfo)
	switch {
	case !ok:
		t.Errorf("COM2 backing %#v, want a URI", ports[1])
	case podvm.IsProxyURI(uri) && (b.ProxyURI != uri || b.ServiceURI != podvm.ProxyServiceURI || b.Direction != "server"):
		t.Errorf("COM2 backing %#v, want proxy %s, service %s, direction server", b, uri, podvm.ProxyServiceURI)
	case !podvm.IsProxyURI(uri) && (b.ServiceURI != uri || b.ProxyURI != "" || b.Direction != "client"):
		t.Errorf("COM2 backing %#v, want %s, direction client", b, uri)
	}
	extra := map[string]string{}
	for _, o := range vm.Config.ExtraConfig {
		v := o.GetOptionValue()
		extra[v.Key], _ = v.Value.(string)
	}
	if extra[guestchannel.GuestinfoChannel] != podvm.ChannelDevice {
		t.Errorf("%s = %q, want %q", guestchannel.GuestinfoChannel, extra[guestchannel.GuestinfoChannel], podvm.ChannelDevice)
	}
	spec, err := guestchannel.UnmarshalSpec([]byte(extra[guestchannel.GuestinfoSpec]))
	if err != nil {
		t.Fatal(err)
	}
	if !guestchannel.CheckChannelToken(key, spec.ChannelToken, rec.UID, rec.Namespace, rec.Name) {
		t.Errorf("the spec's channel token %q is not the pod's under the key", spec.ChannelToken)
	}
}

func TestChannelSettingsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"not tcp", func(c *Config) { c.ChannelURI, c.ChannelKeyFile = "udp://c.example:23", "/k" }, "want telnet://host:port"},
		{"no port", func(c *Config) { c.ChannelURI, c.ChannelKeyFile = "tcp://c.example", "/k" }, "want telnet://host:port"},
		{"proxy without a port", func(c *Config) { c.ChannelURI, c.ChannelKeyFile = "telnets://c.example", "/k" }, "want telnet://host:port"},
		{"no key file", func(c *Config) { c.ChannelURI = "tcp://c.example:7041" }, EnvChannelKeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.set(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an error saying %q", err, tc.want)
			}
		})
	}
	e := newEnv(t)
	cfg := testConfig()
	cfg.ChannelURI, cfg.ChannelKeyFile = "tcp://c.example:7041", filepath.Join(t.TempDir(), "absent")
	if _, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: testenv.Logger()}); err == nil || !strings.Contains(err.Error(), EnvChannelKeyFile) {
		t.Errorf("New with a missing channel key file = %v, want an error naming %s", err, EnvChannelKeyFile)
	}
}

// A channel port that connects to the concentrator directly is allowed, but
// a vCenter will not vMotion its VM: the provisioner says so at start, and
// says nothing when the concentrator is the ports' proxy.
func TestDirectChannelPortsAreWarnedOfAtStart(t *testing.T) {
	e := newEnv(t)
	keyFile := filepath.Join(t.TempDir(), "channel.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("c", guestchannel.ChannelKeySize)), 0o600); err != nil {
		t.Fatal(err)
	}
	for uri, warned := range map[string]bool{"ssl://c.example:7041": true, "telnets://c.example:7041": false} {
		var logs bytes.Buffer
		cfg := testConfig()
		cfg.ChannelURI, cfg.ChannelKeyFile = uri, keyFile
		if _, err := New(cfg, Deps{Bus: e.Bus, VSphere: e.sess, Logger: slog.New(slog.NewTextHandler(&logs, nil))}); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), "will not vMotion them"); got != warned {
			t.Errorf("%s: warned %v, want %v; logs:\n%s", uri, got, warned, logs.String())
		}
	}
}

// A pod asking for an encrypted ephemeral disk fails where channels are
// network serial ports: the concentrator cannot prove a key request comes
// from the pod's VM, so no key is ever released over such a line.
func TestEncryptedPodFailsWithSerialChannels(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "channel.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("c", guestchannel.ChannelKeySize)), 0o600); err != nil {
		t.Fatal(err)
	}
	kek := filepath.Join(dir, "kek")
	if err := diskkeys.WriteKeyFile(kek); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.ChannelURI, cfg.ChannelKeyFile, cfg.KeyFile = "tcp://concentrator.example:7041", keyFile, kek
	e.start(cfg)
	pod := testPod("sealed-serial")
	pod.Annotations = map[string]string{events.AnnotationEphemeralEncryption: events.EphemeralEncryptionRequired}
	acc := e.request(pod)
	e.facts(acc, e.DC.Hosts()[0].Name)
	f := testenv.Wait(e.Env, func(p *events.PodFailed) bool { return p.UID == acc.UID })
	if f.Reason != ReasonEncryptionUnavailable || !strings.Contains(f.Message, EnvChannelURI) {
		t.Fatalf("pod.failed = %+v, want EncryptionUnavailable naming %s", f, EnvChannelURI)
	}
	if vms := e.vmsNamed("pv-" + acc.UID); len(vms) != 0 {
		t.Fatalf("%d VMs made for a pod that cannot get its key", len(vms))
	}
}

// Templates fork pod VMs that boot the image and talk on network serial
// ports, as on a vCenter: the template VM has the pod's boot disk and
// serial ports, its spec says it is a template's and carries the token of
// the template's own identity (the concentrator checks a hello's token
// against the identity it names), and a pod forked from it has its
// template's ports and boot disk and its own spec with its own token.
func TestTemplatesForkBootedPodVMsOnNetworkSerialPorts(t *testing.T) {
	e := newEnv(t)
	const boot = "[shared-ds] podvisor/boot-0123456789ab/podvm.vmdk"
	simtest.CreateDisks(t, e.vc, e.dco, "[shared-ds] podvisor/boot-0123456789ab", boot)
	key := []byte(strings.Repeat("c", guestchannel.ChannelKeySize))
	keyFile := filepath.Join(t.TempDir(), "channel.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.ChannelURI, cfg.ChannelKeyFile, cfg.BootDisk, cfg.TemplatesWarm = "tcp://concentrator.example:7041", keyFile, boot, 1
	cfg.ForkEarly = false
	svc, _ := e.start(cfg)
	host := e.DC.Hosts()[0].Name
	ctx := context.Background()
	// vmOf is what a VM's hardware and guestinfo say of its channel.
	vmOf := func(ref string) (channel string, bootDisk bool, spec *guestchannel.PodSpec) {
		t.Helper()
		var vm mo.VirtualMachine
		if err := e.vc.RetrieveOne(ctx, vmRef(ref), []string{"config.hardware.device", "config.extraConfig"}, &vm); err != nil {
			t.Fatal(err)
		}
		devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
		for _, d := range devices.SelectByType((*types.VirtualSerialPort)(nil)) {
			if b, ok := d.(*types.VirtualSerialPort).Backing.(*types.VirtualSerialPortURIBackingInfo); ok {
				channel = b.ServiceURI
			}
		}
		for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
			if b, ok := d.(*types.VirtualDisk).Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok && b.FileName == boot {
				bootDisk = true
			}
		}
		for _, o := range vm.Config.ExtraConfig {
			if v := o.GetOptionValue(); v.Key == guestchannel.GuestinfoSpec {
				s, err := guestchannel.UnmarshalSpec([]byte(v.Value.(string)))
				if err != nil {
					t.Fatal(err)
				}
				spec = s
			}
		}
		if spec == nil {
			t.Fatalf("VM %s has no %s", ref, guestchannel.GuestinfoSpec)
		}
		return channel, bootDisk, spec
	}

	e.startPod(svc, imagePod("first", "app"))
	tmpl := e.readyTemplate(svc)
	if tmpl.Shape.Channel != cfg.ChannelURI || tmpl.Shape.BootDisk != boot {
		t.Errorf("template shape: channel %q, boot disk %q; want %q and %q", tmpl.Shape.Channel, tmpl.Shape.BootDisk, cfg.ChannelURI, boot)
	}
	// The host agents' concentrator routes the template's line by what its
	// record says of its host.
	kv, err := e.Bus.KV(ctx, bus.BucketPodTemplates)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(ctx, tmpl.Name)
	if err != nil {
		t.Fatal(err)
	}
	var placed events.PodTemplatePlacement
	if err := json.Unmarshal(entry.Value(), &placed); err != nil || placed.Name != tmpl.Name || placed.Shape.Host != host {
		t.Errorf("the template's record read as events.PodTemplatePlacement: %+v, %v; want %s on %s", placed, err, tmpl.Name, host)
	}
	channel, bootDisk, spec := vmOf(tmpl.VMRef)
	if channel != cfg.ChannelURI || !bootDisk {
		t.Errorf("template VM: channel port %q, boot disk %v; want %q and the boot disk", channel, bootDisk, cfg.ChannelURI)
	}
	if !spec.Template || spec.Namespace != templates.Namespace || spec.UID != tmpl.Name {
		t.Errorf("template's spec: template %v, identity %s/%s uid %s; want a template's of %s", spec.Template, spec.Namespace, spec.Name, spec.UID, tmpl.Name)
	}
	if !guestchannel.CheckChannelToken(key, spec.ChannelToken, tmpl.Name, templates.Namespace, tmpl.Name) {
		t.Errorf("the template's channel token %q is not its own identity's under the key", spec.ChannelToken)
	}

	_, second := e.startPod(svc, imagePod("second", "app"))
	if got := e.DC.ForkedFrom(second.VMRef); got != tmpl.VMRef {
		t.Fatalf("second pod's VM %s is forked from %q, want the template %s", second.VMRef, got, tmpl.VMRef)
	}
	channel, bootDisk, spec = vmOf(second.VMRef)
	if channel != cfg.ChannelURI || !bootDisk {
		t.Errorf("forked VM: channel port %q, boot disk %v; want %q and the boot disk", channel, bootDisk, cfg.ChannelURI)
	}
	if spec.Template || spec.UID != second.UID {
		t.Errorf("forked VM's spec: template %v, uid %s; want the pod's (%s)", spec.Template, spec.UID, second.UID)
	}
	if !guestchannel.CheckChannelToken(key, spec.ChannelToken, second.UID, second.Namespace, second.Name) {
		t.Errorf("the forked VM's channel token %q is not the pod's under the key", spec.ChannelToken)
	}
}
