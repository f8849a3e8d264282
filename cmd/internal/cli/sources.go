package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/podvisor/podvisor/events"
)

// manifestSource is one manifest read for apply: its display name and its
// documents as JSON, v1 Lists already expanded into their items.
type manifestSource struct {
	name string
	docs [][]byte
}

// manifestExtensions are the files a directory contributes, as kubectl.
var manifestExtensions = map[string]bool{".yaml": true, ".yml": true, ".json": true}

// readSources reads every -f value in order: "-" is standard input, an
// http(s) URL is fetched, a directory contributes its manifest files
// (sorted; subdirectories with recursive), anything else is a file.
func readSources(ctx context.Context, files []string, recursive bool, stdin io.Reader) ([]manifestSource, error) {
	var out []manifestSource
	stdinUsed := false
	for _, f := range files {
		switch {
		case f == "-":
			if stdinUsed {
				return nil, usageError("-f -: standard input can be read only once")
			}
			stdinUsed = true
			src, err := parseSource("standard input", stdin)
			if err != nil {
				return nil, err
			}
			out = append(out, src)
		case strings.HasPrefix(f, "http://") || strings.HasPrefix(f, "https://"):
			src, err := fetchSource(ctx, f)
			if err != nil {
				return nil, err
			}
			out = append(out, src)
		default:
			info, err := os.Stat(f)
			if err != nil {
				return nil, fmt.Errorf("-f %s: %w", f, err)
			}
			if !info.IsDir() {
				src, err := readFileSource(f)
				if err != nil {
					return nil, err
				}
				out = append(out, src)
				continue
			}
			n := 0
			err = filepath.WalkDir(f, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if d.IsDir() {
					if path != f && !recursive {
						return filepath.SkipDir
					}
					return nil
				}
				if !manifestExtensions[strings.ToLower(filepath.Ext(path))] {
					return nil
				}
				src, err := readFileSource(path)
				if err != nil {
					return err
				}
				n++
				out = append(out, src)
				return nil
			})
			if err != nil {
				return nil, err
			}
			if n == 0 {
				hint := ""
				if !recursive {
					hint = " (-R reads subdirectories)"
				}
				return nil, fmt.Errorf("-f %s: no .yaml, .yml or .json files in the directory%s", f, hint)
			}
		}
	}
	return out, nil
}

func readFileSource(path string) (manifestSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return manifestSource{}, err
	}
	defer f.Close()
	return parseSource(path, f)
}

// fetchSource GETs a manifest (30 s at most; a non-2xx answer is an error
// naming the status).
func fetchSource(ctx context.Context, url string) (manifestSource, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return manifestSource{}, fmt.Errorf("-f %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return manifestSource{}, fmt.Errorf("-f %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return manifestSource{}, fmt.Errorf("-f %s: the server answered %s", url, resp.Status)
	}
	return parseSource(url, io.LimitReader(resp.Body, 64<<20))
}

// parseSource splits a YAML or JSON stream into documents and expands v1
// Lists (what `podvisor get pods -o yaml` prints) into their items.
func parseSource(name string, r io.Reader) (manifestSource, error) {
	src := manifestSource{name: name}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for n := 1; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return src, fmt.Errorf("%s: read document %d: %w", name, n, err)
		}
		// Strictly, as DecodeObjects: a key given twice is an error
		// naming it, not the last one winning.
		j, err := events.DocumentJSON(doc)
		if err != nil {
			return src, fmt.Errorf("%s: document %d: invalid YAML: %w", name, n, err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			continue
		}
		var list struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Items      []json.RawMessage `json:"items"`
		}
		if json.Unmarshal(j, &list) == nil && list.Kind == "List" && list.APIVersion == "v1" {
			for _, item := range list.Items {
				src.docs = append(src.docs, item)
			}
			continue
		}
		src.docs = append(src.docs, j)
	}
	return src, nil
}

// stream joins the documents back into one stream for events.DecodeObjects
// (JSON documents are YAML documents).
func (s manifestSource) stream() io.Reader {
	var b bytes.Buffer
	for _, d := range s.docs {
		b.WriteString("---\n")
		b.Write(d)
		b.WriteString("\n")
	}
	return &b
}
