package events

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// DocumentJSON converts one YAML (or JSON) document of a manifest stream to
// JSON the way DecodeObjects does: strictly, so that a key given twice in a
// mapping is an error naming the key's path and both lines instead of the
// last one winning silently.
func DocumentJSON(doc []byte) ([]byte, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		if dups := duplicateKeys(doc); len(dups) > 0 {
			return nil, errors.New(strings.Join(dups, "; "))
		}
		return nil, err
	}
	return j, nil
}

// duplicateKeys lists every key that a YAML document sets twice in one
// mapping, as "<path>: key already set at document line N, set again at
// document line M". It reads the document with yaml.v3's node API, which
// keeps every key with its line; sigs.k8s.io/yaml's strict mode only says
// "key already set in map" with no path.
func duplicateKeys(doc []byte) []string {
	var root yamlv3.Node
	if yamlv3.Unmarshal(doc, &root) != nil {
		return nil
	}
	var dups []string
	var walk func(n *yamlv3.Node, path *field.Path)
	walk = func(n *yamlv3.Node, path *field.Path) {
		switch n.Kind {
		case yamlv3.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yamlv3.SequenceNode:
			for i, c := range n.Content {
				walk(c, path.Index(i))
			}
		case yamlv3.MappingNode:
			first := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Kind != yamlv3.ScalarNode {
					continue
				}
				child := keyPath(path, k.Value)
				if line, ok := first[k.Value]; ok {
					dups = append(dups, fmt.Sprintf("%s: key already set at document line %d, set again at document line %d", child, line, k.Line))
				} else {
					first[k.Value] = k.Line
				}
				walk(v, child)
			}
		}
		// Aliases are not followed: what they point to is walked where
		// it is defined.
	}
	walk(&root, nil)
	return dups
}

// simpleKey is a mapping key that reads well as a path element (spec,
// containers); other keys (podvisor.io/networks) are shown as [key].
var simpleKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]*$`)

func keyPath(parent *field.Path, key string) *field.Path {
	if parent != nil && !simpleKey.MatchString(key) {
		return parent.Key(key)
	}
	return parent.Child(key)
}
