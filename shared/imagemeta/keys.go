package imagemeta

import (
	"strings"

	"github.com/podvisor/podvisor/events"
)

// Key prefix and index keys (see the package doc for the schema).
const (
	Prefix      = "pv:img:"
	IndexChains = Prefix + "{index}:chains"
	IndexImages = Prefix + "{index}:images"
	EpochKey    = Prefix + "{index}:epoch"
)

// RefKey holds the manifest digest an image reference resolved to.
func RefKey(imageRef string) string { return Prefix + "ref:{" + imageRef + "}" }

// ManifestKey holds the JSON Manifest of a digest.
func ManifestKey(digest string) string { return Prefix + "manifest:{" + digest + "}" }

// ChainKey is the hash holding the events.ChainRecord of chainID on datastore ds.
func ChainKey(chainID, ds string) string { return Prefix + "chain:{" + chainID + "}:" + ds }

// ChainRefsKey is the set of pod uids referencing chainID on ds.
func ChainRefsKey(chainID, ds string) string { return ChainKey(chainID, ds) + ":refs" }

// ChainLeaseKey is the pull lease of chainID on ds.
func ChainLeaseKey(chainID, ds string) string { return ChainKey(chainID, ds) + ":lease" }

// ChainLocsKey is the hash datastore → state of chainID.
func ChainLocsKey(chainID string) string { return Prefix + "chain:{" + chainID + "}:locs" }

// PodKey is the set of "<chainID>@<ds>" a pod (by uid) references.
func PodKey(uid string) string { return Prefix + "pod:{" + uid + "}" }

// IndexMember is how a chain on a datastore appears in IndexChains and PodKey
// sets: "<chainID>@<ds>" (events.ChainRecordKey).
func IndexMember(chainID, ds string) string { return chainID + "@" + ds }

// ParseIndexMember splits an IndexMember. A chainID never contains '@'
// ("sha256:<hex>"), so the first '@' separates.
func ParseIndexMember(m string) (chainID, ds string, ok bool) {
	chainID, ds, ok = strings.Cut(m, "@")
	if !ok || chainID == "" || ds == "" {
		return "", "", false
	}
	return chainID, ds, true
}

// Manifest is what the image cache stores per manifest digest: enough to
// compute chain locality and list images without asking the registry.
type Manifest struct {
	// Digest is the manifest digest.
	Digest string `json:"digest"`
	// Image is the first reference seen for the digest.
	Image string `json:"image"`
	// Layers are the image's layers, base first.
	Layers []Layer `json:"layers"`
	// Config is how the image's containers run (Entrypoint, Cmd, Env, …);
	// absent in manifests stored by versions that did not keep it.
	Config *events.ImageConfig `json:"config,omitempty"`
}

// Layer is one layer of a Manifest.
type Layer struct {
	// Digest of the compressed blob.
	Digest string `json:"digest"`
	// DiffID is the digest of the uncompressed tar.
	DiffID string `json:"diffID"`
	// ChainID of the prefix ending with this layer.
	ChainID string `json:"chainID"`
	// Size of the compressed blob in bytes.
	Size int64 `json:"size"`
}

// Size is the sum of the layer sizes.
func (m Manifest) Size() int64 {
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// PodContainersKey holds the JSON list of a pod's containers and images,
// kept from pod.accepted for pod.scheduled (which does not carry them).
func PodContainersKey(uid string) string { return Prefix + "pod:{" + uid + "}:containers" }

// AnnouncedKey is the set of datastores on which image.pulled was published
// for a manifest digest (so it is published once per image and datastore).
func AnnouncedKey(digest string) string { return Prefix + "manifest:{" + digest + "}:announced" }

// PodReadyKey holds what the last pod.images.ready of a pod announced (each
// container's top disk) and whether pod.accepted announced it, so
// pod.scheduled does not announce pod.accepted's announcement twice.
func PodReadyKey(uid string) string { return Prefix + "pod:{" + uid + "}:ready" }
