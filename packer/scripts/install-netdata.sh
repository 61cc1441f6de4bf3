#!/bin/sh
# Installs netdata from the distribution (Ubuntu: universe; Rocky/Alma 9: EPEL) and
# enables it. Its streaming to the metrics server (the stack's API key) is node
# configuration: cloud-init writes it at boot. Does nothing when netdata is there.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

case $OS_FAMILY in
    debian) pkg_install netdata ;;
    rhel)
        # netdata is in EPEL; Rocky and Alma ship epel-release in their extras.
        pkg_install epel-release
        pkg_install netdata
        ;;
esac
pkg_installed netdata || die "netdata is not installed"
enable_unit netdata.service
log "netdata $(pkg_version netdata) installed and enabled"
