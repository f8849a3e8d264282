#!/busybox/sh
# Run by Tilt after it synced a new binary (live_update run step): marks the
# restart as wanted, then stops the running podvisor; start.sh sees the mark
# and starts the new binary in the same container.
set -eu
state=${PODVISOR_LIVE_DIR:-/tmp/live}
touch "$state/restart"
kill -TERM "$(cat "$state/pid")"
