package imagecache

import (
	"slices"
	"testing"
)

func TestReadyDatastores(t *testing.T) {
	for _, c := range []struct {
		sig  string
		want []string
	}{
		{"app=[shared-ds] podvisor-images/abc/disk.vmdk;", []string{"shared-ds"}},
		{"app=[a] x.vmdk;side=[b] y.vmdk;", []string{"a", "b"}},
		{"app=no-datastore.vmdk;", nil},
		{"app=[] x.vmdk;", nil},
		{"garbage", nil},
	} {
		if got := readyDatastores(c.sig); !slices.Equal(got, c.want) {
			t.Errorf("readyDatastores(%q) = %v, want %v", c.sig, got, c.want)
		}
	}
}
