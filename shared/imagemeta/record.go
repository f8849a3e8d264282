package imagemeta

import (
	"fmt"
	"strconv"
	"time"

	"github.com/podvisor/podvisor/events"
)

// Chain record hash fields. Times are Unix milliseconds so that Lua scripts
// compare them as numbers (the garbage collector's grace check).
const (
	FieldChainID    = "chainID"
	FieldDatastore  = "datastore"
	FieldDisk       = "disk"
	FieldParent     = "parent"
	FieldParentDisk = "parentDisk"
	FieldLayer      = "layer"
	FieldDiffID     = "diffID"
	FieldBlob       = "blob"
	FieldDepth      = "depth"
	FieldSize       = "size"
	FieldState      = "state"
	FieldReason     = "reason"
	FieldRefs       = "refs"
	FieldCreatedAt  = "createdAt"
	FieldLastUsed   = "lastUsed"
)

// EncodeChain flattens a record into hash field/value pairs for HSET.
// State, Refs and LastUsed are left out: the image cache's scripts own them;
// a zero CreatedAt is left out so that rewriting a record keeps it.
func EncodeChain(r events.ChainRecord) []any {
	out := []any{
		FieldChainID, r.ChainID,
		FieldDatastore, r.Datastore,
		FieldDisk, r.Disk,
		FieldParent, r.Parent,
		FieldParentDisk, r.ParentDisk,
		FieldLayer, r.Layer,
		FieldDiffID, r.DiffID,
		FieldBlob, r.Blob,
		FieldDepth, r.Depth,
		FieldSize, r.Size,
	}
	if !r.CreatedAt.IsZero() {
		out = append(out, FieldCreatedAt, r.CreatedAt.UnixMilli())
	}
	return out
}

// DecodeChain reads a record hash (HGETALL). An empty hash is (zero, false, nil).
func DecodeChain(h map[string]string) (events.ChainRecord, bool, error) {
	if len(h) == 0 || h[FieldChainID] == "" {
		return events.ChainRecord{}, false, nil
	}
	r := events.ChainRecord{
		ChainID:    h[FieldChainID],
		Datastore:  h[FieldDatastore],
		Disk:       h[FieldDisk],
		Parent:     h[FieldParent],
		ParentDisk: h[FieldParentDisk],
		Layer:      h[FieldLayer],
		DiffID:     h[FieldDiffID],
		Blob:       h[FieldBlob],
		State:      h[FieldState],
		Reason:     h[FieldReason],
	}
	var err error
	if r.Depth, err = atoi(h, FieldDepth); err != nil {
		return r, true, err
	}
	if r.Size, err = atoi64(h, FieldSize); err != nil {
		return r, true, err
	}
	if r.Refs, err = atoi(h, FieldRefs); err != nil {
		return r, true, err
	}
	if r.CreatedAt, err = millis(h, FieldCreatedAt); err != nil {
		return r, true, err
	}
	if r.LastUsed, err = millis(h, FieldLastUsed); err != nil {
		return r, true, err
	}
	return r, true, nil
}

func atoi64(h map[string]string, f string) (int64, error) {
	v, ok := h[f]
	if !ok || v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("chain record %s field %s: %q is not an integer", h[FieldChainID], f, v)
	}
	return n, nil
}

func atoi(h map[string]string, f string) (int, error) {
	n, err := atoi64(h, f)
	return int(n), err
}

func millis(h map[string]string, f string) (time.Time, error) {
	n, err := atoi64(h, f)
	if err != nil || n == 0 {
		return time.Time{}, err
	}
	return time.UnixMilli(n).UTC(), nil
}
