package balancedallocation

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestScore(t *testing.T) {
	const gib = fwtest.GiB
	fwtest.Scores(t, &Plugin{}, []fwtest.ScoreCase{
		{Name: "balanced", Pod: fwtest.MakePod("p").Size(1000, gib), Host: fwtest.MakeHost("h").Capacity(10000, 10*gib), Want: 100},
		{Name: "cpu heavy pod on memory heavy host", Pod: fwtest.MakePod("p").Size(5000, gib), Host: fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(0, 4*gib), Want: 100},
		{Name: "skewed", Pod: fwtest.MakePod("p").Size(8000, gib), Host: fwtest.MakeHost("h").Capacity(10000, 10*gib), Want: 30},
	})
}
