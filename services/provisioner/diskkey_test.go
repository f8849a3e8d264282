package provisioner

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/provisioner/diskkeys"
	"github.com/podvisor/podvisor/shared/testenv"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/mo"
)

// An encrypted pod's VM carries the nonce of its create and no key; the
// provisioner releases the key, wrapped for the guest's public key, to a
// request naming that VM's instance uuid and nonce, and to nothing else.
func TestEncryptedPodKeyReleasedOnlyToItsVM(t *testing.T) {
	e := newEnv(t)
	cfg := testConfig()
	cfg.KeyFile = filepath.Join(t.TempDir(), "kek")
	if err := diskkeys.WriteKeyFile(cfg.KeyFile); err != nil {
		t.Fatal(err)
	}
	svc, _ := e.start(cfg)
	host := e.DC.Hosts()[0].Name
	pod := testPod("sealed")
	pod.Annotations = map[string]string{events.AnnotationEphemeralEncryption: events.EphemeralEncryptionRequired}
	acc, _ := e.provision(pod, host)
	// The record names the VM from the write after the announcement.
	r := e.waitRecord(svc, "default", "sealed", func(r *events.PodRecord) bool { return r.VMRef != "" })
	if r.Encryption == nil || r.Encryption.Nonce == "" || len(r.Encryption.WrappedKey) == 0 {
		t.Fatalf("record encryption = %+v, want a nonce and a sealed key", r.Encryption)
	}
	keeper, err := diskkeys.Load(cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := keeper.Open(r)
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	var vm mo.VirtualMachine
	ref := vmRef(r.VMRef)
	if err := object.NewVirtualMachine(e.vc.Client, ref).Properties(ctx, ref, []string{"config"}, &vm); err != nil {
		t.Fatal(err)
	}
	var spec guestchannel.PodSpec
	for _, o := range vm.Config.ExtraConfig {
		ov := o.GetOptionValue()
		s, _ := ov.Value.(string)
		for _, form := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key)} {
			if strings.Contains(s, form) {
				t.Errorf("guestinfo %s carries the key", ov.Key)
			}
		}
		if ov.Key == guestchannel.GuestinfoSpec {
			if err := json.Unmarshal([]byte(ov.Value.(string)), &spec); err != nil {
				t.Fatal(err)
			}
		}
	}
	if spec.Encryption == nil || spec.Encryption.Nonce != r.Encryption.Nonce {
		t.Fatalf("the VM's spec asks for encryption %+v, want the record's nonce", spec.Encryption)
	}

	priv, err := guestchannel.NewKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	req := events.DiskKeyRequest{Namespace: "default", Name: "sealed", UID: acc.UID, Host: host,
		VMUUID: vm.Config.InstanceUuid, Nonce: r.Encryption.Nonce, PublicKey: priv.PublicKey().Bytes()}
	ask := func(q events.DiskKeyRequest) ([]byte, error) {
		data, _ := json.Marshal(q)
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return e.Bus.Request(rctx, events.SubjectDiskKeyRelease, data)
	}
	answer, err := ask(req)
	if err != nil {
		t.Fatalf("release: %v", err)
	}
	var resp events.DiskKeyResponse
	if err := json.Unmarshal(answer, &resp); err != nil {
		t.Fatal(err)
	}
	got, err := guestchannel.OpenDiskKey(priv, resp.Wrapped, vm.Config.InstanceUuid, r.Encryption.Nonce)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("the guest opens %x (%v), want the pod's key", got, err)
	}
	impostor := req
	impostor.VMUUID = "42000000-0000-0000-0000-000000000000"
	if _, err := ask(impostor); err == nil || !strings.Contains(err.Error(), "instance uuid") {
		t.Fatalf("release to another uuid: %v, want refused naming the instance uuid", err)
	}
}

// Without a key-encryption key, a pod that asks for an encrypted disk
// fails with EncryptionUnavailable and gets no VM.
func TestEncryptedPodWithoutKeyFileFails(t *testing.T) {
	e := newEnv(t)
	e.start(testConfig())
	pod := testPod("sealed")
	pod.Annotations = map[string]string{events.AnnotationEphemeralEncryption: events.EphemeralEncryptionRequired}
	acc := e.request(pod)
	e.facts(acc, e.DC.Hosts()[0].Name)
	f := testenv.Wait(e.Env, func(p *events.PodFailed) bool { return p.UID == acc.UID })
	if f.Reason != ReasonEncryptionUnavailable || !strings.Contains(f.Message, "PODVISOR_PROVISIONER_KEY_FILE") {
		t.Fatalf("pod.failed = %+v, want EncryptionUnavailable naming the key file setting", f)
	}
	if vms := e.vmsNamed("pv-" + acc.UID); len(vms) != 0 {
		t.Fatalf("%d VMs made for a pod that cannot get its key", len(vms))
	}
}

// While the guest waits for its key the pod's reason is WaitingForKey; once
// the disk is open it is ContainerCreating again, then Running.
func TestWaitingForKeyShowsOnThePod(t *testing.T) {
	e := newEnv(t)
	svc, _ := e.start(testConfig())
	acc, started := e.startPod(svc, testPod("web"))
	vm := started.VMName
	wait := report(acc, vm, "boot-1", 1, waiting("app", "ContainerCreating", 0), waiting("sidecar", "ContainerCreating", 0), waiting("logger", "ContainerCreating", 0))
	wait.Phase, wait.Reason, wait.Message = events.GuestPhasePending, guestchannel.ReasonWaitingForKey, "waiting for its key"
	if r := e.fold(svc, wait); r.Phase != events.PodPhaseStarting || r.Reason != guestchannel.ReasonWaitingForKey {
		t.Fatalf("record while waiting: phase %s reason %q, want Starting / WaitingForKey", r.Phase, r.Reason)
	}
	open := report(acc, vm, "boot-1", 2, waiting("app", "ContainerCreating", 0), waiting("sidecar", "ContainerCreating", 0), waiting("logger", "ContainerCreating", 0))
	open.Phase = events.GuestPhasePending
	if r := e.fold(svc, open); r.Reason != events.ReasonContainerCreating {
		t.Fatalf("record once the disk is open: reason %q, want ContainerCreating", r.Reason)
	}
	if r := e.fold(svc, report(acc, vm, "boot-1", 3, running("app"), running("sidecar"), running("logger"))); r.Phase != events.PodPhaseRunning || r.Reason != "" {
		t.Fatalf("record once running: phase %s reason %q", r.Phase, r.Reason)
	}
}
