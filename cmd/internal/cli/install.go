package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podvisor/podvisor/services/hostagent"

	"github.com/spf13/cobra"

	"github.com/podvisor/podvisor/cmd/internal/install"
	"github.com/podvisor/podvisor/services/provisioner"
	"github.com/podvisor/podvisor/services/provisioner/podvm"
	"github.com/podvisor/podvisor/services/scheduler"
	"github.com/podvisor/podvisor/shared/vsphere"
)

func newInstallCmd(_ *globals) *cobra.Command {
	var (
		url, datacenter string
		insecure        bool
		opts            install.Options
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Prepare a vCenter: check prerequisites, create the folder, upload the pod VM boot image, create the template",
		Long: `install checks that the vCenter is supported (version, a distributed switch, a datastore with room,
the account's privileges) and lists everything missing at once; then it creates the podvisor folder,
uploads the boot image built by 'make podvm-image' to the datastore and creates the pod VM template.
Re-running it changes nothing; a new boot image is installed beside the old one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := vsphere.ConfigFromEnv()
			if url != "" {
				cfg, err = vsphere.Config{URL: url, Insecure: insecure || cfg.Insecure}, nil
			}
			if err != nil {
				return usageError("%v", err)
			}
			if datacenter != "" {
				cfg.Datacenter = datacenter
			}
			if err := cfg.Validate(); err != nil {
				return usageError("--vcenter-url: %v", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			s, err := vsphere.Connect(ctx, cfg)
			if err != nil {
				return err
			}
			defer s.Close(context.Background())
			done, err := install.Install(ctx, s, opts)
			for _, st := range done.Steps {
				fmt.Fprintln(cmd.OutOrStdout(), st)
			}
			if err == nil {
				// Without it the provisioner's pod VMs have no operating
				// system on a real vCenter.
				fmt.Fprintf(cmd.OutOrStdout(), "\npod VMs boot this image once the provisioner has:\n  %s=%q\n",
					provisioner.EnvBootDisk, done.BootDisk)
				// Only hosts that mount the image's datastore can run pod
				// VMs: the scheduler is told which.
				if dp, perr := podvm.ParseBootDisk(done.BootDisk); perr == nil {
					fmt.Fprintf(cmd.OutOrStdout(), "and the scheduler, so that pods go only to hosts that mount its datastore:\n  %s=%q\n",
						scheduler.EnvRequiredDatastores, dp.Datastore)
				}
				// A vSphere host runs no host agent: the agents reach their
				// pod VMs through network serial ports (docs/deploy.md),
				// proxied by the concentrator so that vMotion moves them.
				fmt.Fprintf(cmd.OutOrStdout(), "and, for the pod VM agents to reach the host agents, a concentrator that every host reaches, as the ports' proxy, with one key file:\n"+
					"  %s=\"telnet://<concentrator>:7041\"  %s=<key file>   (provisioner)\n"+
					"  %s=\"telnet://0.0.0.0:7041\"  %s=<key file>   (podvisord serve hostagent)\n",
					provisioner.EnvChannelURI, provisioner.EnvChannelKeyFile, hostagent.EnvConcentrator, hostagent.EnvChannelKeyFile)
				// Forks need nothing more of the vCenter than instant
				// clones (vSphere 6.7 or later); they are off unless asked.
				fmt.Fprintf(cmd.OutOrStdout(), "and, to fork pod VMs from running templates (instant clones) instead of booting each:\n  %s=1   (provisioner)\n",
					provisioner.EnvTemplatesWarm)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "vcenter-url", "", "the vCenter (https://user:pass@host/sdk; default $GOVC_URL)")
	f.BoolVar(&insecure, "insecure", false, "skip TLS certificate verification (default $GOVC_INSECURE)")
	f.StringVar(&datacenter, "datacenter", "", "the datacenter (default the only one)")
	f.StringVar(&opts.Datastore, "datastore", "", "datastore for the boot image (default the one with most free space)")
	f.StringVar(&opts.Folder, "folder", "podvisor", "VM folder for the templates")
	f.StringVar(&opts.ImageDir, "image-dir", defaultImageDir(), "the boot image built by make podvm-image")
	return cmd
}

// defaultImageDir is bin/podvm beside the podvisor executable, else in the
// current directory.
func defaultImageDir() string {
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Join(filepath.Dir(exe), "podvm")
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir
		}
	}
	return "bin/podvm"
}
