#!/usr/bin/env bash
# Install a real Barbican server from PyPI into its own virtualenv, for the key-manager tests.
# Idempotent: when the virtualenv already imports barbican's WSGI app and the crypto plugins,
# nothing is done. Usage: scripts/install-barbican.sh [VENV_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv-install.sh
. "${here}/scripts/venv-install.sh"

# Barbican pins nothing that conflicts with imgcrypt because it lives in its own virtualenv;
# the server is run with the standard library's wsgiref, so no uwsgi/gunicorn is needed.
install_service_venv barbican "${1:-${here}/.venv-barbican}" '
import barbican.api.app
import barbican.plugin.crypto.simple_crypto
import barbican.plugin.store_crypto
import barbican.model.repositories
' barbican
