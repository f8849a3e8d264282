package bytesize_test

import (
	"testing"

	"github.com/podvisor/podvisor/shared/bytesize"
)

func TestPrint(t *testing.T) {
	tests := []struct {
		n          int64
		iec, short string
	}{
		{0, "0 B", "0B"},
		{1023, "1023 B", "1023B"},
		{1024, "1.0 KiB", "1.0Ki"},
		{1536, "1.5 KiB", "1.5Ki"},
		{20 << 30, "20.0 GiB", "20.0Gi"},
		{1<<20 - 1, "1024.0 KiB", "1024.0Ki"},
		{3 << 60, "3.0 EiB", "3.0Ei"},
	}
	for _, tt := range tests {
		if got := bytesize.IEC(tt.n); got != tt.iec {
			t.Errorf("IEC(%d) = %q, want %q", tt.n, got, tt.iec)
		}
		if got := bytesize.Short(tt.n); got != tt.short {
			t.Errorf("Short(%d) = %q, want %q", tt.n, got, tt.short)
		}
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1048576": 1 << 20, "20Gi": 20 << 30, "512Ki": 512 << 10, " 3Ti ": 3 << 40} {
		if got, err := bytesize.Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1GB", "Gi"} {
		if _, err := bytesize.Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
