package hostagent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/podvisor/podvisor/agent/guestchannel"
	"github.com/podvisor/podvisor/events"
)

// keyRequestTimeout bounds one key request to the provisioner.
const keyRequestTimeout = 10 * time.Second

// forwardKeyRequest carries a guest's key request (in its hello) to the
// provisioner and the wrapped disk key back. The host agent sees only the
// key wrapped for the guest's key pair: it can neither open it nor reuse
// it. A refusal is passed on to the guest (its pod shows it as
// WaitingForKey) and the request is made again with back-off while the
// channel lives, since a refusal may be a record that has not caught up.
func (s *Service) forwardKeyRequest(ctx context.Context, pc *podConn) {
	kr := pc.hello.KeyRequest
	req := events.DiskKeyRequest{
		Namespace: pc.pod.Namespace, Name: pc.pod.Name, UID: pc.hello.PodUID, Host: s.cfg.Host,
		VMUUID: pc.hello.VMUUID, Nonce: kr.Nonce, PublicKey: kr.PublicKey, BootID: pc.hello.BootID,
	}
	data, err := json.Marshal(&req)
	if err != nil {
		return
	}
	told := ""
	delay := 500 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, keyRequestTimeout)
		answer, err := s.bus.Request(rctx, events.SubjectDiskKeyRelease, data)
		cancel()
		if err == nil {
			var resp events.DiskKeyResponse
			if err = json.Unmarshal(answer, &resp); err == nil {
				if err := pc.conn.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{Wrapped: resp.Wrapped}); err != nil {
					return
				}
				pc.log.Info("disk key passed to the guest", "publicKey", guestchannel.KeyFingerprint(kr.PublicKey))
				return
			}
		}
		if msg := err.Error(); msg != told {
			told = msg
			pc.log.Warn("disk key not released", "err", err)
			if pc.conn.Send(guestchannel.TypeDiskKey, "", guestchannel.DiskKey{Error: msg}) != nil {
				return
			}
		}
		select {
		case <-time.After(delay):
		case <-pc.gone:
			return
		case <-ctx.Done():
			return
		}
		delay = min(2*delay, 10*time.Second)
	}
}
