# shellcheck shell=sh
# Shared by the provisioning scripts of packer/ (sourced, never run).
#
# Every path a script writes is prefixed with $ROOT (from AUTOSCALE_ROOT, default
# "/"), so the tests can run the scripts unprivileged into a temporary tree.
# Packages always go to the running system: only the package manager knows it.
#
#   AUTOSCALE_ROOT    where the node's file system is ("/" on a node or image build)
#   AUTOSCALE_SOURCE  where the template uploaded the repo's files (/tmp/autoscale-etcd)

ROOT=${AUTOSCALE_ROOT:-/}
ROOT=${ROOT%/}
# These are read by the scripts that source this file.
# shellcheck disable=SC2034
SOURCE_DIR=${AUTOSCALE_SOURCE:-/tmp/autoscale-etcd}
# shellcheck disable=SC2034
AGENT_HOME=/opt/autoscale-etcd
# shellcheck disable=SC2034
CONFIG_DIR=/etc/autoscale-etcd

log() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# The node's distribution family, from $ROOT/etc/os-release: "debian" or "rhel".
# Read once below, outside any subshell, so an unknown distribution stops the script.
os_family() {
    [ -r "$ROOT/etc/os-release" ] || die "cannot read $ROOT/etc/os-release"
    # shellcheck disable=SC1091
    family=$(. "$ROOT/etc/os-release" && printf '%s %s' "${ID:-}" "${ID_LIKE:-}")
    case " $family " in
        *" debian "* | *" ubuntu "*) echo debian ;;
        *" rhel "* | *" fedora "* | *" centos "* | *" rocky "* | *" almalinux "*) echo rhel ;;
        *) die "unsupported distribution ($family): Ubuntu 24.04 or Rocky/Alma 9 expected" ;;
    esac
}

OS_FAMILY=$(os_family)

os_release_value() {
    sed -n "s/^$1=//p" "$ROOT/etc/os-release" | tr -d "\"'"
}

pkg_installed() {
    case $OS_FAMILY in
        debian) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
        *) rpm -q "$1" >/dev/null 2>&1 ;;
    esac
}

pkg_version() {
    case $OS_FAMILY in
        debian) dpkg-query -W -f='${Version}' "$1" 2>/dev/null ;;
        *) rpm -q --qf '%{VERSION}-%{RELEASE}' "$1" 2>/dev/null ;;
    esac
}

# Install the named packages that are not installed yet; nothing at all when all are.
pkg_install() {
    missing=""
    for name in "$@"; do
        pkg_installed "$name" || missing="$missing $name"
    done
    [ -n "$missing" ] || return 0
    log "installing$missing"
    case $OS_FAMILY in
        debian)
            # shellcheck disable=SC2086
            # A fresh cloud image may still run apt-daily: wait for its lock.
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
                    install -y -qq --no-install-recommends $missing
            ;;
        *)
            # shellcheck disable=SC2086
            dnf install -y -q $missing
            ;;
    esac
}

# A command that must be there; its package is installed only when it is not.
need_command() {
    command -v "$1" >/dev/null 2>&1 || pkg_install "$2"
    command -v "$1" >/dev/null 2>&1 || die "$1 not found after installing $2"
}

# Copy $1 to $2 with mode $3 when the content or mode differs; says whether it did.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2" &&
        [ "$(stat -c %a "$2")" = "$(printf '%s' "$3" | sed 's/^0*//')" ]; then
        return 1
    fi
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.new"
    chmod "$3" "$2.new"
    mv -f "$2.new" "$2"
    log "installed $2"
    return 0
}

# systemctl on the running system, or offline on the tree under $ROOT.
systemctl_root() {
    if [ -n "$ROOT" ]; then
        systemctl --root="$ROOT" "$@"
    else
        systemctl "$@"
    fi
}

# Enable a unit (no start: the image is being built, or cloud-init starts it).
enable_unit() {
    systemctl_root is-enabled --quiet "$1" 2>/dev/null && return 0
    systemctl_root enable "$1"
}
