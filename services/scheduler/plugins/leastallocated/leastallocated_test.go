package leastallocated

import (
	"testing"

	"github.com/podvisor/podvisor/services/scheduler/framework/fwtest"
)

func TestScore(t *testing.T) {
	const gib = fwtest.GiB
	pod := fwtest.MakePod("p").Size(1000, gib)
	fwtest.Scores(t, &Plugin{}, []fwtest.ScoreCase{
		{Name: "empty host", Pod: pod, Host: fwtest.MakeHost("h").Capacity(10000, 10*gib), Want: 90},
		{Name: "half used", Pod: pod, Host: fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(4000, 4*gib), Want: 50},
		{Name: "full after the pod", Pod: pod, Host: fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(9000, 9*gib), Want: 0},
		{Name: "cpu free memory busy", Pod: pod, Host: fwtest.MakeHost("h").Capacity(10000, 10*gib).Used(0, 9*gib), Want: 45},
	})
}
