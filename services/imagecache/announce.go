package imagecache

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	il "github.com/podvisor/podvisor/shared/imagemeta"
)

// image.pulled announces an image on a datastore once: the first pod to
// find it complete there announces it, and the datastore then joins the
// image's announced set (il.AnnouncedKey). The set is written after the
// publish is acknowledged, never before: a crash (or a failed publish) in
// between leaves the image unannounced, so the redelivered pod event
// announces it again, under the same effect id (JetStream keeps one copy).
//
// Between the check and the set, a claim keeps the announcement to one
// pod when several of the image's pods finish at once: the first claims it
// with its cause event's id; the others leave it to that pod. The claim
// outlives a crash by announceClaimTTL, during which the claimant's own
// redelivery (same cause id) takes it over; after that anyone may.

const announceClaimTTL = time.Minute

// announceClaimKey shares the announced set's hash tag ({digest}), so one
// script may use both on Redis Cluster.
func announceClaimKey(digest, ds string) string { return il.AnnouncedKey(digest) + ":claim:" + ds }

// claimScript: 0 = already announced, 1 = claimed by this cause (now or
// before), 2 = another pod is announcing.
var claimScript = redis.NewScript(`
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[2] then return 2 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
`)

// announcedScript records the announcement and drops this cause's claim.
var announcedScript = redis.NewScript(`
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
`)

// claimAnnouncement reports whether the pod event cause is to announce
// image digest on datastore ds.
func (s *Service) claimAnnouncement(ctx context.Context, digest, ds, cause string) (bool, error) {
	r, err := claimScript.Run(ctx, s.db.Client(), []string{il.AnnouncedKey(digest), announceClaimKey(digest, ds)},
		ds, cause, announceClaimTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("claim the announcement of %s on %s: %w", digest, ds, err)
	}
	return r == 1, nil
}

// announced records that image digest was announced on ds.
func (s *Service) announced(ctx context.Context, digest, ds, cause string) error {
	if err := announcedScript.Run(ctx, s.db.Client(), []string{il.AnnouncedKey(digest), announceClaimKey(digest, ds)}, ds, cause).Err(); err != nil {
		return fmt.Errorf("record the announcement of %s on %s: %w", digest, ds, err)
	}
	return nil
}
