package events

import (
	"encoding/json"
	"sort"
	"strconv"
)

func itoa(i int) string { return strconv.Itoa(i) }

// sortedKeys makes map iteration deterministic so error lists come out in the
// same order on every run.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// jsonUnmarshalLoose decodes into generic values, for diagnostics only.
func jsonUnmarshalLoose(data []byte, v any) error { return json.Unmarshal(data, v) }
