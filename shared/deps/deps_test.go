package deps

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"

	"github.com/podvisor/podvisor/shared/bus"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func TestRequireNamesEveryMissingConnectionAndWhy(t *testing.T) {
	d := Deps{VSphere: &vsphere.Session{Client: &govmomi.Client{}}} // no finder, no datacenter
	err := d.Require(NeedBus("events go through it"), NeedVSphere("VMs are made there"), NeedRedis("chains are recorded there"))
	if !errors.Is(err, ErrMissing) {
		t.Fatalf("err = %v, want ErrMissing", err)
	}
	for _, want := range []string{
		"Deps.Bus: required (events go through it)",
		"Deps.VSphere: required (VMs are made there)",
		"Deps.Redis: required (chains are recorded there)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestRequireAcceptsWhatIsThere(t *testing.T) {
	d := Deps{Bus: &bus.Bus{}, VSphere: &vsphere.Session{Client: &govmomi.Client{}, Finder: &find.Finder{}, Datacenter: &object.Datacenter{}}}
	if err := d.Require(NeedBus("b"), NeedVSphere("v"), Need{}); err != nil {
		t.Fatalf("Require: %v", err)
	}
	if err := d.Require(NeedRedis("r")); err == nil || strings.Contains(err.Error(), "Bus") {
		t.Fatalf("Require(Redis) = %v, want only Redis missing", err)
	}
}

func TestLogDiscardsWithoutALogger(t *testing.T) {
	if (Deps{}).Log() == nil {
		t.Fatal("Log() is nil without a Logger")
	}
	l := slog.Default()
	if (Deps{Logger: l}).Log() != l {
		t.Fatal("Log() is not the Logger given")
	}
}
