package ociregistry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// VMOSRepoTag is the sample image of a native VM's operating system: a
// root filesystem whose /sbin/init a simulated guest boots (busybox, a
// minimal init that does what cloud-init's VMware datasource does, and the
// vmware-rpctool the datasource asks for guestinfo).
const VMOSRepoTag = "podvisor/vmos:1.0"

// vmosApplets are the busybox applets the init and a person at the
// console use.
var vmosApplets = []string{"sh", "echo", "cat", "ls", "sleep", "mkdir", "rm", "touch", "base64", "sed", "awk", "tr",
	"head", "hostname", "ip", "dirname", "ps", "kill", "true", "false", "env", "date", "grep", "wc", "uname", "id",
	"mount", "umount", "mke2fs", "df"}

// VMInit is the sample image's /sbin/init. Like cloud-init with the
// VMware datasource it reads guestinfo.metadata and guestinfo.userdata
// (base64 when their .encoding says so) with vmware-rpctool, keeps them in
// /var/lib/cloud/instance, sets the host name, configures each NIC from
// the metadata's network section as netplan does (the card of the entry's
// match.macaddress, renamed to its set-name, given its address),
// and runs the user data: a "#!" script is executed; of a "#cloud-config"
// document, in cloud-init's order, the write_files entries (path and
// one-line content) are written, each fs_setup device ("- {device:
// /dev/sdb, filesystem: ext4}") that holds no filesystem yet is formatted
// (ext2: what busybox makes), each mounts entry ("- [/dev/sdb, /data]")
// is mounted, and each runcmd line ("- cmd") is run by sh. It then waits
// as PID 1 until the VM is powered off.
const VMInit = `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin
trap 'echo "init: power off"; exit 0' TERM INT
inst=/var/lib/cloud/instance
get() { vmware-rpctool "info-get guestinfo.$1" 2>/dev/null; }
decode() { if [ "$(get "$1.encoding")" = base64 ]; then get "$1" | base64 -d; else get "$1"; fi; }
mkdir -p $inst
decode metadata > $inst/meta-data
decode userdata > $inst/user-data.txt
ip link set lo up
name=$(sed -n 's/^local-hostname: *//p' $inst/meta-data)
[ -n "$name" ] && hostname "$name"
# The network section's ethernets, as netplan reads them: each entry's
# card is the one of its match.macaddress, named set-name, given its
# addresses. Cards are renamed through temporary names first, so that two
# may swap theirs.
awk '/^    [^ ]/ { if (m != "") print m, n, a; m = n = a = "" }
     /macaddress:/ { s = $0; sub(/.*macaddress: *"?/, "", s); sub(/["} ].*/, "", s); m = tolower(s) }
     /set-name:/ { s = $0; sub(/.*set-name: */, "", s); n = s }
     /addresses:/ { s = $0; sub(/.*addresses: *\[ */, "", s); sub(/[],].*/, "", s); gsub(/"/, "", s); a = s }
     END { if (m != "") print m, n, a }' $inst/meta-data > $inst/nics
card() { ip -o link | awk -v m="$1" 'tolower($0) ~ "link/ether " m { n = $2; sub(/:$/, "", n); sub(/@.*/, "", n); print n; exit }'; }
i=0
while read -r mac name addr; do
  dev=$(card "$mac"); [ -n "$dev" ] && ip link set "$dev" down && ip link set "$dev" name "nic$i"
  i=$((i+1))
done < $inst/nics
while read -r mac name addr; do
  dev=$(card "$mac")
  if [ -z "$dev" ]; then echo "init: no card of $mac"; continue; fi
  [ -n "$name" ] && [ "$dev" != "$name" ] && ip link set "$dev" name "$name" && dev=$name
  ip link set "$dev" up && ip addr add "$addr" dev "$dev" && echo "init: $dev $addr"
done < $inst/nics
gw=$(sed -n 's/^ *gateway4: *//p' $inst/meta-data | head -n 1)
[ -n "$gw" ] && ip route add default via "$gw"
case "$(head -n 1 $inst/user-data.txt)" in
'#!'*) sh $inst/user-data.txt > $inst/user-data.log 2>&1; echo "init: user data script exited $?" ;;
'#cloud-config'*)
  awk '/^ *- *path: */ { sub(/^ *- *path: */, ""); p = $0 }
       /^ *content: */ { sub(/^ *content: */, ""); if (p != "") { d = p; sub(/\/[^\/]*$/, "", d); system("mkdir -p \"" d "\""); print > p; close(p); p = "" } }' $inst/user-data.txt
  for dev in $(sed -n 's/^ *- *{ *device: *\([^,} ]*\).*/\1/p' $inst/user-data.txt); do
    mkdir -p /run/probe
    if mount -o ro "$dev" /run/probe 2>/dev/null; then umount /run/probe
    else mke2fs -F "$dev" >/dev/null 2>&1 && echo "init: formatted $dev"; fi
  done
  sed -n 's/^ *- *\[ *\([^], ]*\) *, *\([^], ]*\).*/\1 \2/p' $inst/user-data.txt | while read -r dev dir; do
    mkdir -p "$dir" && mount "$dev" "$dir" && echo "init: $dev mounted on $dir"
  done
  awk '/^[^ -]/ { run = ($0 ~ /^runcmd:/) ; next } run && /^ *- / { sub(/^ *- */, ""); print }' $inst/user-data.txt > $inst/runcmd
  sh $inst/runcmd > $inst/runcmd.log 2>&1 || echo "init: runcmd exited $?"
  echo "init: cloud-config applied" ;;
esac
echo "init: ready $(hostname)"
touch /run/ready
while :; do sleep 3600 & wait $!; done
`

// VMRPCTool stands in for open-vm-tools' vmware-rpctool in simulated
// guests, which have no VMware backdoor: the hypervisor serves each
// guestinfo value as a file in /run/vmware/guestinfo. Stock cloud-init's
// VMware datasource runs `vmware-rpctool "info-get guestinfo.userdata"`,
// so with this in the image it reads its data unchanged; on vSphere the
// real tool answers from the VM's ExtraConfig.
const VMRPCTool = `#!/bin/sh
case "$1" in
"info-get "*)
  k=${1#info-get }
  [ -f "/run/vmware/guestinfo/$k" ] && exec cat "/run/vmware/guestinfo/$k"
  echo "No value found" >&2; exit 1 ;;
*) echo "vmware-rpctool: unsupported command: $1" >&2; exit 1 ;;
esac
`

// VMOSFiles are the files of the sample VM image besides busybox.
func VMOSFiles() []File {
	return []File{
		{Path: "sbin/init", Mode: 0o755, Body: []byte(VMInit)},
		{Path: "usr/bin/vmware-rpctool", Mode: 0o755, Body: []byte(VMRPCTool)},
		{Path: "etc/hostname", Mode: 0o644, Body: []byte("localhost\n")},
	}
}

// VMOSApplets are the busybox applets of the sample VM image.
func VMOSApplets() []string { return append([]string(nil), vmosApplets...) }

// SeedVMOS pushes VMOSRepoTag and returns its reference; fs.ErrNotExist
// (IsMissing) when busybox is not installed.
func SeedVMOS(ctx context.Context, addr string, opts ...remote.Option) (string, error) {
	layer, err := BusyboxLayer(vmosApplets, VMOSFiles())
	if err != nil {
		return "", fmt.Errorf("vm image: %w", err)
	}
	ref := addr + "/" + VMOSRepoTag
	if _, err := PushWith(ctx, ref, opts, layer); err != nil {
		return "", err
	}
	return ref, nil
}
