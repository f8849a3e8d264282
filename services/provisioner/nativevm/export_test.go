package nativevm

import "context"

// ImageDisk exposes imageDisk to the tests of concurrent builds.
func (c *Controller) ImageDisk(ctx context.Context, ref, ds string) (string, int64, error) {
	return c.imageDisk(ctx, ref, ds)
}
