package netconfig

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/netconfig/fabric"
	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/record"
)

// The management repair's memory in KV (events.BucketNetMgmt): each host's
// last good port configuration, written with compare-and-set whenever it is
// learnt or restored, and read when a host is cut off that this process
// never saw working. A replica that takes over (or a restart) thus repairs
// a port that broke before it started with that host's own last good
// configuration, not the connected hosts' common one, and repairs at all
// when no host is connected to vote.

// mgmtGood is one host's last good management port configuration.
type mgmtGood struct {
	Host    string    `json:"host"`
	VLAN    int32     `json:"vlan"`
	Blocked bool      `json:"blocked"`
	Learned time.Time `json:"learned"`
}

func (g mgmtGood) config() fabric.PortConfig {
	return fabric.PortConfig{VLAN: g.VLAN, Blocked: g.Blocked}
}

// kvKeyChars are what a host's key may hold: what a KV key may, but '=',
// which only mgmtLeaseKey holds. A host name with anything else (an IPv6
// address) is hex-encoded.
var kvKeyChars = regexp.MustCompile(`^[-_a-zA-Z0-9]+(\.[-_a-zA-Z0-9]+)*$`)

// mgmtLeaseKey is the key of the repair lease in the bucket; no host's key
// holds '=' (mgmtKey), so it collides with none.
const mgmtLeaseKey = "=repair-lease"

func mgmtKey(host string) string {
	if kvKeyChars.MatchString(host) {
		return host
	}
	return "x-" + hex.EncodeToString([]byte(host))
}

// mgmtRecords returns the store of the bucket, declaring it on first use
// with the replicas of the networks bucket (so it is as durable as the
// network records). Until it can, the repair works from memory alone.
func (s *Service) mgmtRecords(ctx context.Context) *record.Store[mgmtGood] {
	s.mgmt.mu.Lock()
	defer s.mgmt.mu.Unlock()
	if s.mgmt.records != nil {
		return s.mgmt.records
	}
	kv, err := s.bus.OwnBucket(ctx, jetstream.KeyValueConfig{
		Bucket:      events.BucketNetMgmt,
		Description: "podvisor management ports' last good configurations (written by network-config)",
		History:     1,
		Storage:     jetstream.FileStorage,
		MaxBytes:    bus.BucketMaxBytes,
	}, events.BucketNetworks)
	if err != nil {
		s.log.Warn("management repair: its memory stays in this process", "bucket", events.BucketNetMgmt, "err", err)
		return nil
	}
	s.mgmt.records = record.New[mgmtGood](kv, "management port memory")
	return s.mgmt.records
}

// rememberGood records host's last good configuration (unchanged: no write).
func (s *Service) rememberGood(ctx context.Context, host string, c fabric.PortConfig) error {
	st := s.mgmtRecords(ctx)
	if st == nil {
		return nil
	}
	_, err := st.Upsert(ctx, mgmtKey(host), func(g *mgmtGood, exists bool) error {
		if exists && g.config() == c {
			return record.ErrUnchanged
		}
		*g = mgmtGood{Host: host, VLAN: c.VLAN, Blocked: c.Blocked, Learned: time.Now().UTC()}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remember the management port of %s: %w", host, err)
	}
	return nil
}

// recallGood reads host's last good configuration from the bucket.
func (s *Service) recallGood(ctx context.Context, host string) (fabric.PortConfig, bool, error) {
	st := s.mgmtRecords(ctx)
	if st == nil {
		return fabric.PortConfig{}, false, nil
	}
	g, _, err := st.Get(ctx, mgmtKey(host))
	if err != nil || g == nil {
		return fabric.PortConfig{}, false, err
	}
	if g.Host != host {
		return fabric.PortConfig{}, false, errors.New("management port memory: key " + mgmtKey(host) + " holds host " + g.Host)
	}
	return g.config(), true, nil
}
