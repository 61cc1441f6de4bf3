#!/bin/sh
# Creates the agent's virtualenv at /opt/autoscale-etcd/venv with the agent's
# dependencies, pinned exactly as pyproject.toml's [project.dependencies] says (the
# one place pins live: the list is read from the uploaded pyproject.toml, never
# retyped). Only dependencies: the agent's code is the bundle cloud-init delivers.
# Does nothing when the venv already holds exactly these pins for this Python.
#
#   AUTOSCALE_PYPROJECT  the repo's pyproject.toml ($AUTOSCALE_SOURCE/pyproject.toml)
#   AGENT_PYTHON         the interpreter (default python3 on Ubuntu, python3.11 on EL9)
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

PYPROJECT=${AUTOSCALE_PYPROJECT:-$SOURCE_DIR/pyproject.toml}
VENV=$ROOT$AGENT_HOME/venv
REQUIREMENTS=$ROOT$AGENT_HOME/requirements.txt
STAMP=$VENV/autoscale-requirements.txt

[ -r "$PYPROJECT" ] || die "cannot read $PYPROJECT (the template uploads the repo's pyproject.toml)"

# EL9's python3 is 3.9; the agent needs 3.11 or later (tomllib, typing).
case $OS_FAMILY in
    debian)
        PYTHON=${AGENT_PYTHON:-python3}
        pkg_install python3 python3-venv
        ;;
    rhel)
        PYTHON=${AGENT_PYTHON:-python3.11}
        pkg_install python3.11 python3.11-pip
        ;;
esac
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The exact pins, one per line; refuses anything that is not `name==version`.
"$PYTHON" - "$PYPROJECT" >"$WORK/requirements.txt" <<'EOF'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
pinned = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+$")
loose = [dep for dep in dependencies if not pinned.match(dep.replace(" ", ""))]
if loose or not dependencies:
    sys.exit(f"{sys.argv[1]}: [project.dependencies] must pin every package with ==: {loose}")
for dep in dependencies:
    print(dep.replace(" ", ""))
EOF
PY_VERSION=$("$PYTHON" -c 'import platform; print(platform.python_version())')
{
    echo "# python $PY_VERSION"
    cat "$WORK/requirements.txt"
} >"$WORK/stamp"

install_file "$WORK/requirements.txt" "$REQUIREMENTS" 0644 || true

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && cmp -s "$WORK/stamp" "$STAMP"; then
    log "venv $VENV is up to date ($(tr '\n' ' ' <"$WORK/requirements.txt"))"
    exit 0
fi

if [ -d "$VENV" ]; then
    # Another Python or other pins: start again rather than patch a venv in place.
    log "rebuilding $VENV"
    rm -rf "$VENV"
fi
mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet \
    -r "$REQUIREMENTS"
"$VENV/bin/pip" freeze --disable-pip-version-check | tr 'A-Z_' 'a-z-' >"$WORK/freeze"
tr 'A-Z_' 'a-z-' <"$REQUIREMENTS" | while read -r pin; do
    grep -qFx "$pin" "$WORK/freeze" || die "the venv has no $pin after pip install"
done
install_file "$WORK/stamp" "$STAMP" 0644 || true
log "venv $VENV ready with $(tr '\n' ' ' <"$WORK/requirements.txt")"
