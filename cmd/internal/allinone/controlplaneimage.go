package allinone

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podvisor/podvisor/cmd/internal/runner"
	"github.com/podvisor/podvisor/events"
	"github.com/podvisor/podvisor/services/guestcluster"
	"github.com/podvisor/podvisor/shared/ociregistry"
)

// seedControlPlaneImage pushes the guest cluster control-plane image (the
// sample VM operating system and, in a layer of its own, podvisor-guest)
// and declares it as the VirtualMachineImage guestcluster.ControlPlaneImage,
// in the background: the layer is the size of kube-apiserver, and nothing
// waits for it at start. It does so only where a native VM can run it:
// guests on, the sample OS seeded, and podvisor-guest (the guest cluster
// service's PODVISOR_GUESTCLUSTER_BINARY) linked statically, as a guest
// root holds no C library.
func (s *System) seedControlPlaneImage(ctx context.Context) {
	bin, ok := s.controlPlaneBinary()
	if !ok {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		start := time.Now()
		ref, err := s.pushControlPlaneImage(ctx, bin)
		if err == nil {
			img := events.VirtualMachineImage{APIVersion: events.APIVersion, Kind: events.KindVirtualMachineImage,
				Metadata: events.Meta{Name: guestcluster.ControlPlaneImage},
				Spec:     events.VirtualMachineImageSpec{OCI: ref}}
			err = s.declare(ctx, "guest cluster control-plane image", events.TypeVMImageDeclared, img.Metadata.Name, &events.VMImageDeclared{Image: img})
		}
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("guest cluster control-plane image not seeded", "err", err)
			}
			return
		}
		s.log.Info("guest cluster control-plane image seeded", "image", ref, "took", time.Since(start).Round(time.Millisecond))
	}()
}

// controlPlaneBinary is the podvisor-guest the control-plane image is
// made of, and whether guest clusters' control planes run in their VMs
// here: simulated guests on, the sample OS seeded, and podvisor-guest
// (the guest cluster service's PODVISOR_GUESTCLUSTER_BINARY) linked
// statically, as a guest root holds no C library.
// It is decided once (startServices and seedControlPlaneImage both ask).
func (s *System) controlPlaneBinary() (string, bool) {
	s.cpBinaryOnce.Do(func() { s.cpBinary, s.cpBinaryOK = s.findControlPlaneBinary() })
	return s.cpBinary, s.cpBinaryOK
}

func (s *System) findControlPlaneBinary() (string, bool) {
	if s.GuestsOff != "" || s.vmOS == "" || s.registry == nil || s.Datacenter == nil || s.Datacenter.Guests() == nil {
		return "", false
	}
	// Only the guest cluster controller of this process uses the image:
	// without it, pushing a layer the size of kube-apiserver would only
	// take CPU from everything else at start.
	if !slices.ContainsFunc(s.cfg.Services, func(sp runner.Spec) bool { return sp.Name == guestcluster.Name }) {
		return "", false
	}
	cfg, err := guestcluster.ConfigFrom(s.settings())
	if err != nil {
		s.log.Warn("no guest cluster control-plane image", "err", err)
		return "", false
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		s.log.Info("no guest cluster control-plane image: podvisor-guest not found (make guest)", "binary", cfg.Binary)
		return "", false
	}
	if err := staticELF(bin); err != nil {
		s.log.Warn("no guest cluster control-plane image: a VM's root has no C library", "binary", bin, "err", err)
		return "", false
	}
	return bin, true
}

// pushControlPlaneImage pushes the image from bin and returns its reference.
func (s *System) pushControlPlaneImage(ctx context.Context, bin string) (string, error) {
	base, err := ociregistry.BusyboxLayer(ociregistry.VMOSApplets(), ociregistry.VMOSFiles())
	if err != nil {
		return "", err
	}
	gzPath, err := controlPlaneLayer(filepath.Join(s.cfg.StateDir, "cache"), bin)
	if err != nil {
		return "", err
	}
	layer, err := tarball.LayerFromFile(gzPath) // compressed already: used as it is
	if err != nil {
		return "", err
	}
	ref := s.registry.Addr() + "/" + guestcluster.ControlPlaneImageRepoTag
	if _, err := ociregistry.PushWith(ctx, ref, s.registry.Options(), base, layer); err != nil {
		// A layer file that cannot be pushed is made anew next time.
		_ = os.Remove(gzPath)
		return "", err
	}
	return ref, nil
}

// controlPlaneLayer returns the compressed control-plane layer of bin,
// kept in dir between starts: the layer is the size of kube-apiserver, and
// making it cost every start 2.6 s of CPU here (0.4 s of tar, then 1.0–1.2 s
// of compression, once for the digest and again for the upload). It is
// named after the binary's size and modification time, so a rebuilt
// podvisor-guest makes a new one; the older ones are removed.
func controlPlaneLayer(dir, bin string) (string, error) {
	st, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	name := fmt.Sprintf("control-plane-layer-%d-%d.tar.gz", st.Size(), st.ModTime().UnixNano())
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	old, _ := filepath.Glob(filepath.Join(dir, "control-plane-layer-*.tar.gz"))
	for _, p := range old {
		_ = os.Remove(p)
	}
	tmp, err := os.CreateTemp(dir, ".control-plane-layer-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // gone once renamed
	// The fastest compression: the layer goes to a registry on this
	// machine. Go's gzip header carries no time or name, so the same
	// binary makes the same bytes, and the same digest.
	zw, err := gzip.NewWriterLevel(tmp, gzip.BestSpeed)
	if err != nil {
		tmp.Close()
		return "", err
	}
	err = binaryLayerTar(zw, bin)
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// binaryLayerTar writes the control-plane layer to w: podvisor-guest at
// guestcluster.ControlPlaneBinaryPath and an /etc/hosts naming localhost
// (the API server's loopback clients resolve it). Fixed times, so the same
// binary makes the same layer digest and the native VM controller reuses
// the boot disk it built for it.
func binaryLayerTar(w io.Writer, bin string) error {
	src, err := os.Open(bin)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	hosts := []byte("127.0.0.1 localhost\n::1 localhost\n")
	mtime := time.Unix(0, 0)
	for _, h := range []*tar.Header{
		{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "etc/hosts", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(hosts))},
		{Name: "usr/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "usr/bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: guestcluster.ControlPlaneBinaryPath, Typeflag: tar.TypeReg, Mode: 0o755, Size: st.Size()},
	} {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		switch h.Name {
		case "etc/hosts":
			_, err = tw.Write(hosts)
		case guestcluster.ControlPlaneBinaryPath:
			_, err = io.Copy(tw, src)
		}
		if err != nil {
			return fmt.Errorf("control-plane layer: %w", err)
		}
	}
	return tw.Close()
}

// staticELF says why path is not a statically linked executable, or nil.
func staticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("linked dynamically (make guest links it static)")
		}
	}
	return nil
}
