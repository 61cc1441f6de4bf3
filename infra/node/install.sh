#!/bin/sh
# What a plain image lacks and a Packer image (packer/) already has: netdata, curl,
# openssl, a pinned etcd release and the agent's virtualenv. Idempotent.
# usage: install.sh ETCD_VERSION SHA256SUMS REQUIREMENT...
#   SHA256SUMS: "<sha256>  etcd-v<version>-linux-<arch>.tar.gz" lines, the ones of the
#   repository's packer/files/etcd-sha256sums.txt for this version (the user-data
#   carries them): the tarball is installed only if its sha256 is listed there.
#   REQUIREMENT: the agent's pins, from pyproject.toml.
# AUTOSCALE_ROOT (tests) prefixes every path written; packages go to the system.
set -eu
etcd_version="$1"
sums="$2"
shift 2
root="${AUTOSCALE_ROOT:-}"
die() {
    echo "install.sh: $*" >&2
    exit 1
}
# The agent needs Python 3.11 or later: EL9's python3 is 3.9, so python3.11 there.
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq netdata python3-venv curl openssl >/dev/null
    python=python3
elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q epel-release
    dnf install -y -q netdata python3.11 python3.11-pip openssl
    # EL9 cloud images have curl-minimal, which conflicts with the curl package.
    command -v curl >/dev/null 2>&1 || dnf install -y -q curl
    python=python3.11
else
    die "neither apt-get nor dnf: Ubuntu 24.04 or Rocky/Alma 9 expected"
fi
recent='import sys; sys.exit(sys.version_info < (3, 11))'
"${python}" -c "${recent}" || die "${python} is older than 3.11, which the agent needs"
case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) die "no etcd release for machine $(uname -m)" ;;
esac
bin="${root}/usr/local/bin"
if ! "${bin}/etcd" --version 2>/dev/null | grep -q "^etcd Version: ${etcd_version}\$"; then
    name="etcd-v${etcd_version}-linux-${arch}"
    expected="$(awk -v f="${name}.tar.gz" '$2 == f { print $1 }' "${sums}")"
    [ -n "${expected}" ] || die "no sha256 for ${name}.tar.gz in ${sums}"
    url="https://github.com/etcd-io/etcd/releases/download/v${etcd_version}/${name}.tar.gz"
    tmp="$(mktemp -d)"
    trap 'rm -rf "${tmp}"' EXIT
    curl -fsSL --retry 5 -o "${tmp}/${name}.tar.gz" "${url}"
    (cd "${tmp}" && printf '%s  %s\n' "${expected}" "${name}.tar.gz" | sha256sum -c - >/dev/null) ||
        die "sha256 mismatch for ${name}.tar.gz (expected ${expected}): not installed"
    tar -xzf "${tmp}/${name}.tar.gz" -C "${tmp}"
    mkdir -p "${bin}"
    # etcdutl: the agent's snapshot checks and `restore` (agent/backup.py)
    install -m 0755 "${tmp}/${name}/etcd" "${tmp}/${name}/etcdctl" "${tmp}/${name}/etcdutl" "${bin}/"
fi
venv="${root}/opt/autoscale-etcd/venv"
# A venv of an older Python (a first try with python3 on EL9) is made again.
if ! "${venv}/bin/python3" -c "${recent}" 2>/dev/null; then
    rm -rf "${venv}"
    "${python}" -m venv "${venv}"
fi
"${venv}/bin/pip" install --quiet --disable-pip-version-check "$@"
