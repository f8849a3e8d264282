package bytesize

import (
	"fmt"
	"strconv"
	"strings"
)

const unit = 1024

// IEC prints n with a binary unit and one decimal: "512 B", "1.5 KiB",
// "20.0 GiB".
func IEC(n int64) string {
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, prefix := scale(n)
	return fmt.Sprintf("%.1f %ciB", v, prefix)
}

// Short is IEC in the form of a Kubernetes quantity, without the space and
// the B: "512B", "1.5Ki", "20.0Gi".
func Short(n int64) string {
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, prefix := scale(n)
	return fmt.Sprintf("%.1f%ci", v, prefix)
}

// scale is n (at least one unit) in its largest binary unit, and the
// unit's prefix letter.
func scale(n int64) (float64, byte) {
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return float64(n) / float64(div), "KMGTPE"[exp]
}

// Parse reads a size: plain bytes or a whole number with a binary suffix
// (Ki, Mi, Gi, Ti).
func Parse(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 20Gi or 1048576", s)
	}
	return n * mult, nil
}
