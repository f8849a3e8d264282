#!/busybox/sh
# Entrypoint of the dev image (deploy/docker/Dockerfile, stage dev).
#
#   start.sh /podvisor serve scheduler
#
# Runs the podvisor binary with the container's args and runs it again when
# restart.sh asks, so a live update swaps the binary without a new pod. Tilt
# syncs a freshly built binary to /tmp/live/podvisor: /tmp is an emptyDir and
# the only writable place, because the root filesystem is read-only in every
# overlay. A synced binary wins over the one baked into the image.
set -u

state=${PODVISOR_LIVE_DIR:-/tmp/live}
mkdir -p "$state"
image_binary=$1
shift

child=
# Forward termination to podvisor so that it drains its consumers, and exit
# with its status, as if podvisor were the entrypoint.
stop() {
	rm -f "$state/restart"
	[ -n "$child" ] && kill -TERM "$child" 2>/dev/null
	wait "$child"
	exit $?
}
trap stop TERM INT

while :; do
	binary=$image_binary
	[ -x "$state/podvisor" ] && binary=$state/podvisor
	"$binary" "$@" &
	child=$!
	echo "$child" >"$state/pid"
	wait "$child"
	status=$?
	if [ -f "$state/restart" ]; then
		rm -f "$state/restart"
		echo "start.sh: restarting $binary after a live update" >&2
		continue
	fi
	exit "$status"
done
