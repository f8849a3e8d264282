package sim

import (
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/podvisor/podvisor/shared/sim/guest"
)

// Standbys: an instant clone's child resumes its parent's booted guest.
//
// With simulated guests on, a VM that has been instant-cloned keeps one
// standby guest (package guest, StartStandby): booted from copy-on-write
// copies of the VM's read/write disks taken while its guest was paused,
// its agent past init with the disks mounted, waiting. The next instant
// clone of that VM claims it: the copies are moved (renamed, the mounts
// stay) to the child's disk names in place of a fresh clone, and the
// child's power-on hands the child's own configuration to the waiting
// agent instead of booting a guest. Another standby boots right after,
// at a low CPU weight. The first instant clone of a VM has none yet and
// boots its child's guest as before.
//
// What the child gets is the parent's disks as they were when the standby
// was prepared, not at the instant of the clone: for a template, which
// does not change once prepared, the same thing.

// standbySeq numbers the standbys' disk copies.
var standbySeq atomic.Int64

// standbyFor is the standby the VM takes over at its power-on, "" for
// none.
func (d *Datacenter) standbyFor(key string) string {
	d.forkMu.Lock()
	defer d.forkMu.Unlock()
	return d.standbyOf[key]
}

// claimStandby claims the parent's standby and moves its disk copies to
// the child's names; ok is false when there is none or the move failed
// (the standby is then dropped and the disks are cloned as usual).
func (d *Datacenter) claimStandby(p *forkPlan) (guest.Standby, bool) {
	if d.guests == nil || !p.hasGuest {
		return guest.Standby{}, false
	}
	sb, ok := d.guests.ClaimStandby(p.parentKey)
	if !ok {
		return sb, false
	}
	if err := d.moveStandbyDisks(p, sb); err != nil {
		d.guestLog("instant clone: standby not used", p.spec.Name, err)
		d.guests.DropStandby(sb.Key)
		removeCopies(sb.Disks)
		return sb, false
	}
	return sb, true
}

// moveStandbyDisks gives the child the standby's disk copies: each
// read/write disk's descriptor is copied from the parent's and its flat
// extent is the standby's copy, renamed.
func (d *Datacenter) moveStandbyDisks(p *forkPlan, sb guest.Standby) error {
	copyOf := map[string]string{} // the parent's flat extent → the standby's copy
	for _, pd := range p.parent.Disks {
		for _, sd := range sb.Disks {
			if sd.Unit == pd.Unit && !pd.ReadOnly {
				copyOf[pd.Path] = sd.Path
			}
		}
	}
	for _, c := range p.copies {
		f, err := d.filesOf(c)
		if err != nil {
			return err
		}
		from, ok := copyOf[f.flat]
		if !ok {
			return fmt.Errorf("the standby has no copy of %s", c[0])
		}
		if f.flat != f.desc {
			if err := cowCopy(f.desc, f.childDesc); err != nil {
				return err
			}
		}
		if err := os.Rename(from, f.childFlat); err != nil {
			return err
		}
	}
	return nil
}

// refillStandby boots the parent's next standby in the background unless
// it has one or one is being booted.
func (d *Datacenter) refillStandby(p *forkPlan) {
	if d.guests == nil || !p.hasGuest {
		return
	}
	d.forkMu.Lock()
	if d.refilling[p.parentKey] || d.guests.HasStandby(p.parentKey) {
		d.forkMu.Unlock()
		return
	}
	if d.refilling == nil {
		d.refilling = map[string]bool{}
	}
	d.refilling[p.parentKey] = true
	d.forkMu.Unlock()
	go func() {
		defer func() {
			d.forkMu.Lock()
			delete(d.refilling, p.parentKey)
			d.forkMu.Unlock()
		}()
		if err := d.startStandby(p.parent); err != nil {
			d.guestLog("standby", p.parentName, err)
		}
	}()
}

// startStandby copies the parent's read/write disks while its guest is
// paused (beside the parent's own) and boots a standby from the copies.
func (d *Datacenter) startStandby(parent guest.VM) error {
	vm := parent
	vm.Disks = append([]guest.Disk(nil), parent.Disks...)
	var made []string
	err := func() error {
		resume, err := d.guests.Pause(parent.Key)
		if err != nil {
			return err
		}
		defer resume()
		n := standbySeq.Add(1)
		for i, disk := range vm.Disks {
			if disk.ReadOnly {
				continue
			}
			cp := filepath.Join(filepath.Dir(disk.Path), fmt.Sprintf("standby-%d-%s", n, filepath.Base(disk.Path)))
			made = append(made, cp)
			if err := cowCopy(disk.Path, cp); err != nil {
				return err
			}
			vm.Disks[i].Path = cp
		}
		return nil
	}()
	if err == nil {
		_, err = d.guests.StartStandby(parent.Key, vm)
	}
	if err != nil {
		for _, cp := range made {
			_ = os.Remove(cp)
		}
		return fmt.Errorf("standby of %s: %w", parent.Name, err)
	}
	return nil
}

// removeCopies removes a standby's read/write disk copies.
func removeCopies(disks []guest.Disk) {
	for _, disk := range disks {
		if !disk.ReadOnly {
			_ = os.Remove(disk.Path)
		}
	}
}
