#!/bin/sh
# Installs the systemd units of infra/units/ (uploaded by the template) into
# /etc/systemd/system. They are not enabled or started here: cloud-init writes the
# node's settings first, then starts them. Does nothing when they are already there.
#
#   AUTOSCALE_UNITS  the uploaded units directory ($AUTOSCALE_SOURCE/units)
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

UNITS=${AUTOSCALE_UNITS:-$SOURCE_DIR/units}
TARGET=$ROOT/etc/systemd/system

[ -d "$UNITS" ] || die "no units directory at $UNITS (the template uploads infra/units/)"
found=0
changed=0
for unit in "$UNITS"/*; do
    case $unit in
        *.service | *.socket | *.target | *.timer | *.path) ;;
        *) continue ;;
    esac
    [ -f "$unit" ] || continue
    found=$((found + 1))
    if install_file "$unit" "$TARGET/${unit##*/}" 0644; then
        changed=1
    fi
done
[ "$found" -gt 0 ] || die "no systemd units in $UNITS"
if [ "$changed" = 1 ] && [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
log "$found unit(s) in $TARGET"
