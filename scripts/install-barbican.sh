#!/usr/bin/env bash
# Install a real Barbican server from PyPI into its own virtualenv, for the key-manager tests.
# Idempotent: when the virtualenv already imports barbican's WSGI app and the crypto plugins,
# nothing is done. Usage: scripts/install-barbican.sh [VENV_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${here}/.venv-barbican}"
python="${PYTHON:-python3}"

check() {
    "${venv}/bin/python" - <<'PY' >/dev/null 2>&1
import barbican.api.app
import barbican.plugin.crypto.simple_crypto
import barbican.plugin.store_crypto
import barbican.model.repositories
PY
}

if [ -x "${venv}/bin/python" ] && check; then
    echo "barbican already installed in ${venv}"
    exit 0
fi

rm -rf "${venv}"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# Barbican pins nothing that conflicts with imgcrypt because it lives in its own virtualenv;
# the server is run with the standard library's wsgiref, so no uwsgi/gunicorn is needed.
"${venv}/bin/python" -m pip install --quiet barbican

if ! check; then
    echo "barbican installed in ${venv} but does not import" >&2
    exit 1
fi
echo "barbican installed in ${venv}"
