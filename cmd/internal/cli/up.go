package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/allinone"
	"github.com/podvisor/podvisor/cmd/internal/buildinfo"
	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/shared/telemetry"
)

func newUpCmd(g *globals) *cobra.Command {
	var (
		cfg      allinone.Config
		services string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a simulated datacenter, NATS, Redis, a registry and every service in this process",
		Long: `up starts the all-in-one podvisor: an embedded NATS JetStream server (file storage in the
state dir), a vCenter simulator with realistic hosts, Redis, an OCI registry seeded with sample images,
the five services, the guest cluster controller and a status page. It prints the endpoints (and, when
guests run, the host agents and their guest channel) and writes them to <state-dir>/env.
Ctrl-C stops everything; a second up on the same state dir resumes, on the same ports when they
are free (<state-dir>/ports.json remembers them; a port that moved is said in the output).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			if cfg.Clusters < 1 || cfg.HostsPerCluster < 1 {
				return usageError("--clusters and --hosts-per-cluster must be at least 1 (got %d and %d)", cfg.Clusters, cfg.HostsPerCluster)
			}
			specs, err := runner.Select(services)
			if err != nil {
				return usageError("%v", err)
			}
			for _, name := range []string{"nats-port", "vcenter-port", "registry-port", "ui-port"} {
				if cmd.Flags().Changed(name) {
					cfg.ExplicitPorts = append(cfg.ExplicitPorts, "--"+name)
				}
			}
			logger, err := telemetry.LoggerFromEnv()
			if err != nil {
				return usageError("%v", err)
			}
			cfg.Services = specs
			cfg.StateDir = g.stateDir
			cfg.NATSURL = g.natsURL
			cfg.NATSCreds, cfg.NATSCA = os.Getenv("PODVISOR_NATS_CREDS"), os.Getenv("PODVISOR_NATS_CA")
			cfg.Logger = logger
			cfg.Recorder = telemetry.NewRecorder(0)
			ctx := cmd.Context()
			tel, err := telemetry.Setup(ctx, telemetry.Options{Service: "podvisor", Recorder: cfg.Recorder})
			if err != nil {
				return err
			}
			defer tel.Shutdown(context.Background())
			cfg.Metrics = tel.MetricsHandler()
			buildinfo.Register()

			sys, err := allinone.Start(ctx, cfg)
			if err != nil {
				if errors.Is(err, allinone.ErrStateDirInUse) || errors.Is(err, allinone.ErrServiceConfig) {
					return &exitError{code: 2, err: err}
				}
				return err
			}
			defer sys.Close()
			if ctx.Err() != nil {
				return nil // interrupted while starting: nothing to announce
			}
			envPath, err := sys.WriteEnv()
			if err != nil {
				return fmt.Errorf("up: write env file: %w", err)
			}
			sys.PrintEndpoints(g.stdout, envPath, time.Since(start))
			err = sys.Wait(ctx)
			fmt.Fprintln(g.stdout, "stopping…")
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Clusters, "clusters", 2, "clusters in the simulated datacenter")
	f.IntVar(&cfg.HostsPerCluster, "hosts-per-cluster", 8, "hosts per cluster")
	f.StringVar(&services, "services", "all", "services to run in this process: all, none, or a comma list of "+fmt.Sprint(runner.Names()))
	f.StringVar(&cfg.Host, "listen", "127.0.0.1", "address the embedded servers listen on")
	f.IntVar(&cfg.NATSPort, "nats-port", 4222, "NATS port; when given, tried first; else (or 0, or taken) the port of the previous up on this state dir, then this default, then any free one")
	f.IntVar(&cfg.VCenterPort, "vcenter-port", 8989, "vCenter simulator port (order of tries: as for --nats-port)")
	f.IntVar(&cfg.RegistryPort, "registry-port", 5000, "OCI registry port (order of tries: as for --nats-port)")
	f.IntVar(&cfg.UIPort, "ui-port", 8080, "status page port (order of tries: as for --nats-port)")
	f.StringVar(&cfg.VCenterURL, "vcenter-url", "", "use this vCenter (https://user:pass@host/sdk) instead of the simulator")
	f.StringVar(&cfg.RedisURL, "redis-url", "", "use this Redis (redis://host:port/0) instead of starting one")
	f.StringVar(&cfg.Registry, "registry", "", "use this OCI registry (host:port) instead of the embedded one")
	f.Int64Var(&cfg.Seed, "seed", 1, "seed of the simulated host hardware")
	f.StringVar(&cfg.Guests, "guests", allinone.GuestsAuto, "run pod VMs' guests (their agent and containers) in the simulator: auto (when root, an OCI runtime and the agent are here), on (fail otherwise) or off")
	f.IntVar(&cfg.NATSNodes, "nats-nodes", 1, "NATS nodes: above 1, an embedded cluster of that many nodes on loopback (each a process of its own; streams and KV buckets replicated on every node; at most 5)")
	f.IntVar(&cfg.Replicas, "replicas", 0, "run each service as this many 'podvisor serve' processes (restarted when they die) instead of in this process; 0 = in this process")
	f.Float64Var(&cfg.VCenterFaults, "vcenter-faults", 0, "probability (0-1) that the vCenter simulator fails a CreateVM, PowerOn or Relocate call with a fault a retry outlives (fault-injection runs)")
	f.StringVar(&cfg.GuestChannel, "guest-channel", allinone.GuestChannelSocket, "how guests' agents reach their host agents: socket (the hypervisor's, as vsock on a real host) or serial (a network serial port per pod VM that its host connects to the host agents' concentrator over TLS, as on a vCenter whose hosts run no podvisor code; sets "+provisioner.EnvChannelURI+")")
	f.IntVar(&cfg.TemplatesWarm, "templates-warm", 0, "pod VM templates each host keeps warm: pod VMs of a template's shape (host, size, images) are instant clones of it, resuming its booted guest (sets "+provisioner.EnvTemplatesWarm+"; 0 = as that setting says, off by default)")
	f.StringVar(&cfg.Agent, "agent", "", "podvm-agent binary for simulated guests (default: podvm-agent beside this executable)")
	return cmd
}
