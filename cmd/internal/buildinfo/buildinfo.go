// Package buildinfo says which build of podvisor a process runs: the
// version, commit and date the Makefile stamps in at link time, with what
// the Go toolchain records as the fallback. Both executables (podvisor and
// podvisord) print it and every service exports it as podvisor_build_info.
package buildinfo

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Build information, stamped by the Makefile at build time:
//
//	go build -ldflags "-X github.com/podvisor/podvisor/cmd/internal/buildinfo.version=v0.3.0 -X ...buildinfo.commit=<sha> -X ...buildinfo.buildDate=<RFC 3339>"
//
// A plain `go build` leaves them empty; BuildInfo then falls back to what
// the Go toolchain records (the module version and the VCS revision).
var (
	version   string
	commit    string
	buildDate string
)

// Info says which build of podvisor is running.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the running binary's build information.
func Get() Info {
	bi := Info{Version: version, Commit: commit, BuildDate: buildDate, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info, ok := debug.ReadBuildInfo(); ok {
		if bi.Version == "" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			bi.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			switch {
			case s.Key == "vcs.revision" && bi.Commit == "":
				bi.Commit = s.Value
			case s.Key == "vcs.time" && bi.BuildDate == "":
				bi.BuildDate = s.Value
			}
		}
	}
	if bi.Version == "" {
		bi.Version = "dev"
	}
	return bi
}

func (b Info) String() string {
	return fmt.Sprintf("podvisor %s (commit %s, built %s, %s, %s)", b.Version, orUnknown(b.Commit), orUnknown(b.BuildDate), b.GoVersion, b.Platform)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Register exports podvisor_build_info{version,commit} = 1, so a
// scrape says which build each process runs.
func Register() {
	b := Get()
	m := otel.GetMeterProvider().Meter("github.com/podvisor/podvisor/cmd")
	g, err := m.Int64ObservableGauge("podvisor_build_info", metric.WithDescription("The running build: always 1, labelled with version and commit."))
	if err != nil {
		return
	}
	_, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(g, 1, metric.WithAttributes(attribute.String("version", b.Version), attribute.String("commit", b.Commit), attribute.String("go_version", b.GoVersion)))
		return nil
	}, g)
}
