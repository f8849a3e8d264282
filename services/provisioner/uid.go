package provisioner

import (
	"fmt"
	"hash/fnv"
	"path"
	"strings"

	"github.com/google/uuid"
	"github.com/podvisor/podvisor/events"
	corev1 "k8s.io/api/core/v1"
)

// uidNamespace seeds derived pod uids (RFC 4122 name-based, SHA-1), so they
// cannot collide with another system's name-based UUIDs over the same names.
var uidNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://podvisor.io/pods"))

// podUID derives a pod's uid from the pod key and the id of the requesting
// event (a client cannot choose one: events.PodRequested.Validate refuses
// it). Deriving it rather than drawing a random one makes a redelivered
// pod.requested yield the same uid, hence the same VM name.
func podUID(req *events.PodRequested, ceID string) string {
	ns := req.Pod.Namespace
	if ns == "" {
		ns = events.DefaultNamespace
	}
	return uuid.NewSHA1(uidNamespace, []byte(ns+"/"+req.Pod.Name+"\x00"+ceID)).String()
}

// specHash is events.PodSpecHash: the CLI computes the same fingerprint to
// tell "unchanged" from "conflict" before publishing.
func specHash(pod *corev1.Pod) (string, error) { return events.PodSpecHash(pod) }

// vmName is the pod VM's name: pv-<uid> for the pod's first VM. After an
// eviction that could not remove the old VM (its host is unreachable), the
// next VM of the pod is pv-<uid>-<n>, because vCenter would otherwise hold
// two VMs of one name and podvisor never creates duplicates.
func vmName(uid string, suffix int) string {
	if suffix == 0 {
		return "pv-" + uid
	}
	return fmt.Sprintf("pv-%s-%d", uid, suffix)
}

// vmFolder is the folder of a pod VM below the datacenter's VM folder.
func (c Config) vmFolder(namespace, uid string) string {
	f := path.Join(strings.Trim(c.FolderRoot, "/"), namespace)
	if c.FolderShards > 0 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(uid))
		f = path.Join(f, fmt.Sprintf("shard-%d", h.Sum32()%uint32(c.FolderShards)))
	}
	return f
}
