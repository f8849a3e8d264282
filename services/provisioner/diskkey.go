package provisioner

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bus"
)

// prepareEncryption gives a pod that asks for an encrypted ephemeral disk
// a fresh nonce for the create about to be made (and, the first time, its
// sealed disk key). The caller saves the record before the create, so the
// VM's spec and the record always agree on the nonce.
func (s *Service) prepareEncryption(r *events.PodRecord) error {
	if !events.PodEphemeralEncryption(&r.Pod) {
		return nil
	}
	if s.cfg.ChannelURI != "" {
		// A key request arriving through the concentrator proves nothing
		// a reader of the VM's configuration could not say: the key goes
		// only where the hypervisor puts the line (vsock, its socket).
		return step(ReasonEncryptionUnavailable, bus.Permanent(fmt.Errorf(
			"encrypted ephemeral disks are not available where pod VMs' channels are network serial ports (%s): "+
				"a key request on such a line cannot be proven to come from the pod's VM", EnvChannelURI)))
	}
	if err := s.keys.Prepare(r); err != nil {
		return step(ReasonEncryptionUnavailable, bus.Permanent(err))
	}
	return nil
}

// releaseDiskKey answers a host agent's key request for a pod VM's
// encrypted ephemeral disk: it checks the identity the guest states against
// the pod's record and the VM vCenter has under the recorded reference, and
// answers with the disk key wrapped for the guest's public key. The log
// names the pod, the VM and the public key's fingerprint; never a key.
func (s *Service) releaseDiskKey(ctx context.Context, data []byte) ([]byte, error) {
	var req events.DiskKeyRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, fmt.Errorf("key request: %w", err)
	}
	if err := req.Validate(); err != nil {
		return nil, fmt.Errorf("key request: %w", err)
	}
	log := s.log.With("key", events.PodKey(req.Namespace, req.Name), "uid", req.UID, "host", req.Host,
		"publicKey", guestchannel.KeyFingerprint(req.PublicKey), "boot", req.BootID)
	r, err := s.recs.get(ctx, events.PodRecordKey(req.Namespace, req.Name))
	if err != nil {
		return nil, err
	}
	if r == nil {
		log.Warn("disk key refused: no such pod")
		return nil, fmt.Errorf("pod %s has no record", events.PodKey(req.Namespace, req.Name))
	}
	var vmUUID string
	if r.VMRef != "" {
		if err := s.stepCtx(ctx, func(ctx context.Context) error {
			var err error
			vmUUID, err = s.vms.InstanceUUID(ctx, vmRef(r.VMRef))
			return err
		}); err != nil {
			return nil, fmt.Errorf("read the pod VM's identity: %w", err)
		}
	}
	resp, err := s.keys.Release(&req, r, vmUUID)
	if err != nil {
		log.Warn("disk key refused", "vm", r.VMRef, "err", err)
		return nil, err
	}
	log.Info("disk key released", "vm", r.VMRef)
	return json.Marshal(resp)
}
