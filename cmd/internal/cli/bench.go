package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/bench"
	"github.com/podvisor/podvisor/shared/telemetry"
)

func newBenchCmd(g *globals) *cobra.Command {
	var (
		cfg      bench.Config
		output   string
		chart    string
		quiet    bool
		from     string
		timeout  time.Duration
		rawTries []int
		cpuProf  string
		dpProf   string
		memProf  string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure podvisor against direct govmomi and a sequential client, on its own simulator",
		Long: `bench starts its own all-in-one podvisor (temporary state dir, NATS, the vCenter simulator
with --hosts hosts, Redis, the registry, all five services; nothing of a running podvisor up is
used) and measures, in one run:

  pipeline     --pods pod.requested events published in parallel (or at --rate pods/s);
               pods/s to "VM running" (pod.vm.ready: created and powered on; the bench runs
               no guests, so no container starts) and request→VM running latency p50/p95/p99
  raw          the same VMs created and powered on directly with govmomi, on a fresh simulator
               of the same size, at a few worker counts (--raw-workers); the best is reported
  sequential   one VM at a time, create then power on
  also         scheduling-only pods/s, image cache cold vs warm, peak RSS and heap per pod
  data plane   --data-plane-pods pods with simulated guests on (root only; skipped, saying why,
               elsewhere): request → every container running p50/p99, all at once against the
               same bundles started directly with the guests' OCI runtime (crun when installed,
               else runc) in the same run; then as many at --data-plane-rate pods/s
  fork         --fork-pairs created and forked pod VMs on the simulator, guests on (root only)
  boot image   --qemu-pairs templates of the real boot image booted under QEMU (TCG) until
               their container runs, and a child forked from each as VMFork forks until the
               pod's container runs in it: booted / forked p50 (root, QEMU and the boot image's
               tools, run from the source tree; off by default, skipped, saying why, elsewhere)

and prints the table with the ratios pipeline/raw and pipeline/sequential (-o json for the figures).
--chart FILE.svg draws them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError(`-o %q: want table or json`, output)
			}
			cfg.RawWorkers = rawTries
			cfg.Timeout = timeout
			err := cfg.Validate()
			if err != nil && from == "" {
				return usageError("%v", err)
			}
			if !quiet {
				cfg.Progress = g.stderr
				bars := newProgressBars(g.stderr)
				defer bars.done()
				cfg.Bar = bars.bar
			}
			if os.Getenv("PODVISOR_LOG_LEVEL") != "" {
				// The services' logs are off unless asked for: they would
				// bury the progress lines.
				logger, err := telemetry.LoggerFromEnv()
				if err != nil {
					return usageError("%v", err)
				}
				cfg.Logger = logger
			}
			if cpuProf != "" && from == "" {
				f, err := os.Create(cpuProf)
				if err != nil {
					return usageError("--cpuprofile: %v", err)
				}
				defer f.Close()
				cfg.CPUProfile = f
			}
			if c := cfg.DataPlaneChannel; c != allinone.GuestChannelSocket && c != allinone.GuestChannelSerial {
				return usageError("--data-plane-channel %q: want socket or serial", c)
			}
			if dpProf != "" && from == "" {
				f, err := os.Create(dpProf)
				if err != nil {
					return usageError("--data-plane-cpuprofile: %v", err)
				}
				defer f.Close()
				cfg.DataPlaneCPUProfile = f
			}
			if from == "" {
				cfg.MemProfile = memProf
			}
			var res *bench.Result
			if from != "" {
				// Re-render a saved run (its -o json) as a table or chart.
				data, err := os.ReadFile(from)
				if err != nil {
					return usageError("--from: %v", err)
				}
				res = &bench.Result{}
				if err := json.Unmarshal(data, res); err != nil {
					return usageError("--from %s: not the -o json of a bench run: %v", from, err)
				}
			} else if res, err = bench.Run(cmd.Context(), cfg); err != nil {
				return err
			}
			if chart != "" {
				if err := os.WriteFile(chart, []byte(res.SVG()), 0o644); err != nil {
					return fmt.Errorf("--chart: %w", err)
				}
			}
			if output == "json" {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			return res.Table(g.stdout)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Pods, "pods", 1000, "pods to apply (and VMs for the raw baseline)")
	f.IntVar(&cfg.Hosts, "hosts", 64, "simulated hosts (clusters of up to 16)")
	f.Float64Var(&cfg.Rate, "rate", 0, "apply pods at this many per second (0: as fast as possible)")
	f.IntVar(&cfg.Publishers, "publishers", 32, "parallel publishers of pod.requested")
	f.IntSliceVar(&rawTries, "raw-workers", []int{8, 16, 32}, "worker counts the raw baseline tries")
	f.IntVar(&cfg.SequentialVMs, "sequential-vms", 0, "VMs of the sequential baseline (default: min(pods, 200))")
	f.DurationVar(&timeout, "timeout", 0, "how long to wait for the pods to run (default: 1m + 100ms per pod)")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.StringVar(&chart, "chart", "", "write an SVG bar chart of the run to this file")
	f.BoolVarP(&quiet, "quiet", "q", false, "do not print progress to stderr")
	f.StringVar(&from, "from", "", "print (and chart) a saved `-o json` result instead of running")
	f.IntVar(&cfg.ImageMiB, "image-mib", 100, "size of the image for the image-disk measurement in MiB (0: skip it)")
	f.IntVar(&cfg.DataPlanePods, "data-plane-pods", 100, "pods of the data-plane section, guests on, at once against the same bundles run directly with the guests' runtime (crun, else runc; needs root; 0: skip it)")
	f.Float64Var(&cfg.DataPlaneRate, "data-plane-rate", 50, "then as many pods again at this many per second (0: no paced run)")
	f.IntVar(&cfg.ForkPairs, "fork-pairs", 5, "created and forked pod VMs of the fork section, guests on, one at a time (needs root; 0: skip it)")
	f.IntVar(&cfg.QEMUPairs, "qemu-pairs", 0, "templates of the boot image booted under QEMU and children forked from them, one pair at a time: booted vs forked to container running (needs root, QEMU and make podvm-image's tools, run from the source tree; 0: skip it)")
	f.StringVar(&cfg.Agent, "agent", "", "the podvm-agent binary for the data-plane section (default: beside this executable)")
	f.BoolVar(&cfg.ServicesApart, "services-apart", false, "run each service as a process of its own and report the control plane's memory apart from NATS and the simulator")
	f.StringVar(&cpuProf, "cpuprofile", "", "write a pprof CPU profile of the pipeline phase to this file (go tool pprof FILE)")
	f.StringVar(&memProf, "memprofile", "", "write a pprof heap profile of this process once the pipeline's pods ran, after a collection, and with --services-apart one of each service process to FILE.<service> (go tool pprof -sample_index=inuse_space FILE)")
	f.StringVar(&dpProf, "data-plane-cpuprofile", "", "write a pprof CPU profile of the data plane's burst (guests on) to this file")
	f.StringVar(&cfg.DataPlaneChannel, "data-plane-channel", "socket", "how the guests of the data-plane and fork sections reach their host agents: socket (the hypervisor's) or serial (network serial ports to the host agents' concentrator, over TLS, as pod VMs on a vCenter)")
	f.BoolVar(&cfg.DataPlaneSpans, "data-plane-spans", false, "record the services' spans through the data-plane section and report their medians over the burst's pods (recording costs CPU: that run's figures are not comparable with one without it)")
	return cmd
}
