package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"
)

// sizedVolume is an emptyDir on the ephemeral disk with a sizeLimit.
type sizedVolume struct {
	name, dir string
	limit     int64
}

// sizedVolumes lists the pod's emptyDir volumes on the ephemeral disk
// with a sizeLimit (a Memory one is a tmpfs of that size: the kernel
// enforces it).
func (p *Pod) sizedVolumes() []sizedVolume {
	var out []sizedVolume
	for _, v := range p.cfg.Spec.Volumes {
		if e := v.EmptyDir; e != nil && e.Medium != "Memory" && e.SizeLimitBytes > 0 {
			out = append(out, sizedVolume{name: v.Name, dir: p.volumes[v.Name], limit: e.SizeLimitBytes})
		}
	}
	return out
}

// watchVolumes measures the sized volumes every VolumeCheck until the pod
// stops or its containers have all ended for good (the kubelet evicts no
// terminated pod), and evicts the pod once one has grown past its limit, as the
// kubelet does (a hard eviction: no grace period).
func (p *Pod) watchVolumes(vols []sizedVolume) {
	t := time.NewTicker(p.cfg.VolumeCheck)
	defer t.Stop()
	for {
		select {
		case <-p.stopping:
			return
		case <-p.stopped:
			return
		case <-t.C:
		}
		for _, v := range vols {
			used, err := usage(v.dir)
			if err != nil {
				p.cfg.Log.Warn("measure an emptyDir volume", "volume", v.name, "err", err)
				continue
			}
			if used > v.limit && !p.isStopping() {
				msg := fmt.Sprintf("Usage of EmptyDir volume %q exceeds the limit %q.", v.name, quantity(v.limit))
				p.cfg.Log.Warn("pod evicted", "volume", v.name, "used", used, "limit", v.limit)
				p.board.Evict(msg)
				p.Stop(0)
				p.board.Stopped()
				return
			}
		}
	}
}

// usage is the disk space the files below dir take, as du counts it:
// allocated blocks, each inode once.
func usage(dir string) (int64, error) {
	seen := map[uint64]bool{}
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != dir && errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	return total, err
}

// quantity prints bytes as a Kubernetes quantity ("1Mi", "1536Ki", "100").
func quantity(b int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"Ti", 40}, {"Gi", 30}, {"Mi", 20}, {"Ki", 10}} {
		if b >= 1<<u.shift && b%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", b>>u.shift, u.suffix)
		}
	}
	return fmt.Sprint(b)
}
