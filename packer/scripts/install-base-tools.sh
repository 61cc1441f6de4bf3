#!/bin/sh
# The tools the other scripts and the node's boot steps use: curl and tar (etcd's
# release), openssl (a node issues its own TLS certificate at boot when the stack
# uses https), CA certificates. Installs only what is missing.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_command curl curl
need_command tar tar
need_command openssl openssl
pkg_install ca-certificates
log "curl, tar, openssl and CA certificates are there"
