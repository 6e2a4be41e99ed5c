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
# shellcheck source=scripts/venv-install.sh
. "${here}/scripts/venv-install.sh"

# glance.wsgi.api reads its configuration when imported: only look for it.
install_service_venv glance "${venv}" '
import importlib.util
assert importlib.util.find_spec("glance.wsgi.api") is not None
import glance.api.v2.router
import glanceclient
import gunicorn
import glance.async_.flows.plugins
' 'glance>=33,<34' python-glanceclient gunicorn

# imgcrypt's plugins, refreshed every time (editable, so the tests run the work tree's code).
"${venv}/bin/python" -m pip install --quiet -c "${here}/constraints/glance.txt" -e "${here}[glance]"
