package cli

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/shared/bytesize"
	"github.com/podvisor/podvisor/shared/imagemeta"
)

func init() {
	registerResource(&resource{
		names:      []string{"images", "image", "img"},
		kind:       "Image",
		header:     []string{"IMAGE", "DIGEST", "LAYERS", "DATASTORE", "SIZE", "REFS", "STATE"},
		wideHeader: []string{"TOP DISK"},
		wide:       func(r record) []string { return []string{dash(r.(*imageRow).TopDisk)} },
		list: func(ctx context.Context, g *globals) ([]record, error) {
			url, err := g.endpoint("", "PODVISOR_REDIS_URL")
			if err != nil {
				return nil, err
			}
			ca, _ := g.endpoint("", "PODVISOR_REDIS_CA")
			imgs, err := imagemeta.ListImages(ctx, url, ca)
			if err != nil {
				return nil, fmt.Errorf("images (Redis %s): %w", redactURL(url), err)
			}
			out := make([]record, 0, len(imgs))
			for _, im := range imgs {
				out = append(out, &imageRow{im})
			}
			return out, nil
		},
	})
}

type imageRow struct{ events.ImageRecord }

func (i *imageRow) Namespace() string { return "" }
func (i *imageRow) Name() string      { return i.Image }
func (i *imageRow) Object() any       { return i.ImageRecord }

func (i *imageRow) Row(time.Time) []string {
	r := &i.ImageRecord
	digest := r.Digest
	if len(digest) > 19 {
		digest = digest[:19] // sha256: + 12 hex digits, as docker prints
	}
	return []string{r.Image, digest, strconv.Itoa(r.Layers), dash(r.Datastore), bytesize.Short(r.Size), strconv.Itoa(r.Refs), dash(r.State)}
}
