#!/bin/sh
# Installs a pinned etcd 3.5.x release (etcd, etcdctl, etcdutl in /usr/local/bin),
# verified against a sha256 listed in etcd-sha256sums.txt, the etcd system user and
# its data directory. Does nothing when that version is already installed.
#
#   ETCD_VERSION        3.5.x to install (default 3.5.17, the stack's etcd_version default)
#   ETCD_SHA256         the tarball's sha256, instead of looking it up in ETCD_SHA256SUMS
#   ETCD_SHA256SUMS     list of "<sha256>  <tarball>" ($AUTOSCALE_SOURCE/etcd-sha256sums.txt)
#   ETCD_DOWNLOAD_BASE  release download base (etcd's GitHub releases)
#   ETCD_ARCH           amd64, arm64 or ppc64le (default: from uname -m)
#   ETCD_USER           the user etcd runs as (default etcd, as infra/units/ say)
#   ETCD_DATA_DIR       etcd's data directory (default /var/lib/etcd-autoscale)
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

VERSION=${ETCD_VERSION:-3.5.17}
SUMS=${ETCD_SHA256SUMS:-$SOURCE_DIR/etcd-sha256sums.txt}
BASE_URL=${ETCD_DOWNLOAD_BASE:-https://github.com/etcd-io/etcd/releases/download}
ETCD_USER=${ETCD_USER:-etcd}
DATA_DIR=${ETCD_DATA_DIR:-/var/lib/etcd-autoscale}
BIN_DIR=$ROOT/usr/local/bin

case $VERSION in
    3.5.[0-9] | 3.5.[1-9][0-9]) ;;
    *) die "ETCD_VERSION=$VERSION: a 3.5.x release expected (e.g. 3.5.17)" ;;
esac

if [ -z "${ETCD_ARCH:-}" ]; then
    case $(uname -m) in
        x86_64) ETCD_ARCH=amd64 ;;
        aarch64 | arm64) ETCD_ARCH=arm64 ;;
        ppc64le) ETCD_ARCH=ppc64le ;;
        *) die "no etcd release for machine $(uname -m)" ;;
    esac
fi
TARBALL=etcd-v$VERSION-linux-$ETCD_ARCH.tar.gz

installed_version() {
    [ -x "$BIN_DIR/etcd" ] || return 0
    "$BIN_DIR/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: *//p'
}

ensure_user() {
    if grep -q "^$ETCD_USER:" "$ROOT/etc/passwd" 2>/dev/null; then
        return 0
    fi
    log "creating system user $ETCD_USER"
    if [ -n "$ROOT" ]; then
        set -- --root "$ROOT"
    else
        set --
    fi
    useradd "$@" --system --user-group --no-create-home \
        --home-dir "$DATA_DIR" --shell /usr/sbin/nologin "$ETCD_USER"
}

# The units' ReadWritePaths= needs it to exist; made once, owned by etcd, private.
ensure_data_dir() {
    [ -d "$ROOT$DATA_DIR" ] && return 0
    mkdir -p "$ROOT$DATA_DIR"
    chown "$ETCD_USER:$ETCD_USER" "$ROOT$DATA_DIR"
    chmod 0700 "$ROOT$DATA_DIR"
    log "created $DATA_DIR"
}

ensure_user
ensure_data_dir

if [ "$(installed_version)" = "$VERSION" ] &&
    [ -x "$BIN_DIR/etcdctl" ] && [ -x "$BIN_DIR/etcdutl" ]; then
    log "etcd $VERSION already installed"
    exit 0
fi

if [ -n "${ETCD_SHA256:-}" ]; then
    EXPECTED=$ETCD_SHA256
else
    [ -r "$SUMS" ] || die "cannot read the checksum list $SUMS"
    EXPECTED=$(awk -v f="$TARBALL" '$2 == f { print $1 }' "$SUMS")
    [ -n "$EXPECTED" ] ||
        die "no sha256 for $TARBALL in $SUMS: add its line (from the release's SHA256SUMS) or set ETCD_SHA256"
fi
case $EXPECTED in
    *[!0-9a-f]*) die "sha256 for $TARBALL is not 64 hex digits: $EXPECTED" ;;
esac
[ ${#EXPECTED} -eq 64 ] || die "sha256 for $TARBALL is not 64 hex digits: $EXPECTED"

need_command tar tar
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
URL=$BASE_URL/v$VERSION/$TARBALL
log "downloading $URL"
if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$WORK/$TARBALL" "$URL"
elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$WORK/$TARBALL" "$URL"
else
    need_command curl curl
    curl -fsSL --retry 3 -o "$WORK/$TARBALL" "$URL"
fi
if ! (cd "$WORK" && printf '%s  %s\n' "$EXPECTED" "$TARBALL" | sha256sum -c - >/dev/null); then
    die "sha256 mismatch for $TARBALL (expected $EXPECTED): refusing to install it"
fi
tar -xzf "$WORK/$TARBALL" -C "$WORK"
mkdir -p "$BIN_DIR"
for tool in etcd etcdctl etcdutl; do
    [ -f "$WORK/etcd-v$VERSION-linux-$ETCD_ARCH/$tool" ] || die "$TARBALL has no $tool"
    install_file "$WORK/etcd-v$VERSION-linux-$ETCD_ARCH/$tool" "$BIN_DIR/$tool" 0755 || true
done
[ "$(installed_version)" = "$VERSION" ] ||
    die "installed etcd reports version '$(installed_version)', expected $VERSION"
log "etcd $VERSION installed in $BIN_DIR"
