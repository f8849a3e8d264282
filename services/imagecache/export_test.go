package imagecache

import (
	"context"

	"github.com/podvisor/podvisor/events"
)

// What a puller that began chain rec under token does when it wakes from
// a pause, for tests that play one beside a running service: its lease
// keeper renews, and its pull ends through finish with work's outcome.

func (s *Service) RenewLease(ctx context.Context, rec events.ChainRecord, token string) (bool, error) {
	return s.db.Renew(ctx, rec.ChainID, rec.Datastore, token, s.cfg.LeaseTTL)
}

func (s *Service) FinishPull(ctx context.Context, rec events.ChainRecord, token string, work error) error {
	_, _, err := s.finish(ctx, rec, token, work, true)
	return err
}

// ChainWaiters counts the callers waiting for the chain work in flight in
// this process (one per pod and layer).
func (s *Service) ChainWaiters() int {
	s.chains.mu.Lock()
	defer s.chains.mu.Unlock()
	n := 0
	for _, fl := range s.chains.m {
		n += fl.waiters
	}
	return n
}
