#!/usr/bin/env bash
# Install a real Keystone from PyPI (with gunicorn) into its own virtualenv, so the
# image-service tests authenticate Glance, castellan and openstacksdk for real.
# Idempotent: when the virtualenv already imports Keystone's WSGI app, nothing is done.
# Usage: scripts/install-keystone.sh [VENV_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${here}/.venv-keystone}"
python="${PYTHON:-python3}"

check() {
    "${venv}/bin/python" - <<'PY' >/dev/null 2>&1
import keystone.server.wsgi
import keystone.cmd.manage
import gunicorn
PY
}

if [ -x "${venv}/bin/python" ] && check; then
    echo "keystone already installed in ${venv}"
    exit 0
fi

rm -rf "${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
"${venv}/bin/python" -m pip install --quiet keystone gunicorn

if ! check; then
    echo "keystone installed in ${venv} but does not import" >&2
    exit 1
fi
echo "keystone installed in ${venv}"
