#!/bin/sh
# Writes /etc/autoscale-etcd/image-release: what this image holds, as shell-readable
# KEY="value" lines. cloud-init (prebuilt_image: true) reads it to skip installs
# whose version already matches; the agent bundle cloud-init delivers always wins
# over anything in the image. Run last, after the install scripts.
#
#   IMAGE_NAME      the Glance image name the template gives the image
#   IMAGE_BUILT_AT  the build's time stamp (the template passes one per build)
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

RELEASE=$ROOT$CONFIG_DIR/image-release
STAMP=$ROOT$AGENT_HOME/venv/autoscale-requirements.txt

etcd_version=$("$ROOT/usr/local/bin/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: *//p')
[ -n "$etcd_version" ] || die "no etcd in $ROOT/usr/local/bin: run install-etcd.sh first"
netdata_version=$(pkg_version netdata)
[ -n "$netdata_version" ] || die "netdata is not installed: run install-netdata.sh first"
[ -f "$STAMP" ] || die "no agent venv at $ROOT$AGENT_HOME/venv: run install-agent-venv.sh first"
python_version=$(sed -n 's/^# python //p' "$STAMP")
requirements=$(grep -v '^#' "$STAMP" | tr '\n' ' ' | sed 's/ *$//')
units=""
for unit in "${AUTOSCALE_UNITS:-$SOURCE_DIR/units}"/*; do
    [ -f "$ROOT/etc/systemd/system/${unit##*/}" ] || continue
    cmp -s "$unit" "$ROOT/etc/systemd/system/${unit##*/}" ||
        die "$ROOT/etc/systemd/system/${unit##*/} differs from $unit: run install-units.sh first"
    units="$units${units:+ }${unit##*/}"
done
[ -n "$units" ] || die "no units installed in $ROOT/etc/systemd/system: run install-units.sh first"

# Values go in double quotes; none of them may hold a quote, $, ` or \.
quote() {
    case $2 in
        *[\"\$\`\\]*) die "$1 has a character that cannot be quoted: $2" ;;
    esac
    printf '%s="%s"\n' "$1" "$2"
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
{
    echo "# autoscale-etcd node image; written by packer/scripts/write-image-release.sh"
    quote IMAGE_RELEASE_FORMAT 1
    quote IMAGE_NAME "${IMAGE_NAME:-}"
    quote IMAGE_BUILT_AT "${IMAGE_BUILT_AT:-}"
    quote OS_ID "$(os_release_value ID)"
    quote OS_VERSION_ID "$(os_release_value VERSION_ID)"
    quote ETCD_VERSION "$etcd_version"
    quote ETCD_BIN_DIR /usr/local/bin
    quote NETDATA_VERSION "$netdata_version"
    quote AGENT_VENV "$AGENT_HOME/venv"
    quote AGENT_PYTHON_VERSION "$python_version"
    quote AGENT_REQUIREMENTS "$requirements"
    quote UNITS "$units"
} >"$WORK/image-release"
if install_file "$WORK/image-release" "$RELEASE" 0644; then
    cat "$RELEASE" >&2
else
    log "$RELEASE is up to date"
fi
