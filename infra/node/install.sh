#!/bin/sh
# What a plain image lacks and a Packer image (packer/) already has: netdata, curl,
# openssl, a pinned etcd release and the agent's virtualenv. Idempotent.
# usage: install.sh ETCD_VERSION REQUIREMENT...   (pins from pyproject.toml)
set -eu
etcd_version="$1"
shift
if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq netdata python3-venv curl openssl >/dev/null
elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q epel-release
    dnf install -y -q netdata python3 curl openssl
fi
if ! /usr/local/bin/etcd --version 2>/dev/null | grep -q "etcd Version: ${etcd_version}\$"; then
    case "$(uname -m)" in
        aarch64) arch=arm64 ;;
        *) arch=amd64 ;;
    esac
    name="etcd-v${etcd_version}-linux-${arch}"
    url="https://github.com/etcd-io/etcd/releases/download/v${etcd_version}"
    tmp="$(mktemp -d)"
    curl -fsSL --retry 5 -o "${tmp}/${name}.tar.gz" "${url}/${name}.tar.gz"
    curl -fsSL --retry 5 -o "${tmp}/SHA256SUMS" "${url}/SHA256SUMS"
    (cd "${tmp}" && grep " ${name}.tar.gz\$" SHA256SUMS | sha256sum -c -)
    tar -xzf "${tmp}/${name}.tar.gz" -C "${tmp}"
    install -m 0755 "${tmp}/${name}/etcd" "${tmp}/${name}/etcdctl" /usr/local/bin/
    rm -rf "${tmp}"
fi
venv=/opt/autoscale-etcd/venv
[ -x "${venv}/bin/python3" ] || python3 -m venv "${venv}"
"${venv}/bin/pip" install --quiet --disable-pip-version-check "$@"
