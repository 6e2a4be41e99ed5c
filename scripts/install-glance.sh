#!/usr/bin/env bash
# Install a real Glance 33 (with python-glanceclient and gunicorn) from PyPI into its own
# virtualenv, for the image-service tests. Idempotent: when the virtualenv already imports
# Glance's WSGI app, glanceclient and gunicorn, nothing is done.
# imgcrypt itself is installed into it too (with its `glance` extra), because Glance loads
# imgcrypt's import plugins through entry points of an installed distribution.
# Usage: scripts/install-glance.sh [VENV_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${here}/.venv-glance}"
python="${PYTHON:-python3}"

check() {
    "${venv}/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.util
# glance.wsgi.api reads its configuration when imported: only look for it.
assert importlib.util.find_spec("glance.wsgi.api") is not None
import glance.api.v2.router
import glanceclient
import gunicorn
import glance.async_.flows.plugins
PY
}

if [ -x "${venv}/bin/python" ] && check; then
    echo "glance already installed in ${venv}"
else
    rm -rf "${venv}"
    "${python}" -m venv "${venv}"
    "${venv}/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "${venv}/bin/python" -m pip install --quiet 'glance>=33,<34' python-glanceclient gunicorn
    if ! check; then
        echo "glance installed in ${venv} but does not import" >&2
        exit 1
    fi
    echo "glance installed in ${venv}"
fi

# imgcrypt's plugins, refreshed every time (editable, so the tests run the work tree's code).
"${venv}/bin/python" -m pip install --quiet -e "${here}[glance]"
