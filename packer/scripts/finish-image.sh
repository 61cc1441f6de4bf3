#!/bin/sh
# The image's last step: forget what belongs to the build VM, so every server booted
# from the image is a new machine to cloud-init and systemd (its own machine-id,
# cloud-init runs again). Package caches go too. Image builds only: never on a node.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

case $OS_FAMILY in
    debian) apt-get clean ;;
    rhel) dnf clean all -q ;;
esac
# An empty machine-id (not a missing one) makes systemd generate it at first boot.
if [ -s "$ROOT/etc/machine-id" ]; then
    : >"$ROOT/etc/machine-id"
    log "emptied $ROOT/etc/machine-id"
fi
if [ -e "$ROOT/var/lib/dbus/machine-id" ] && [ ! -L "$ROOT/var/lib/dbus/machine-id" ]; then
    rm -f "$ROOT/var/lib/dbus/machine-id"
fi
if command -v cloud-init >/dev/null 2>&1 && [ -z "$ROOT" ]; then
    cloud-init clean --logs
fi
log "image cleaned up"
