#!/usr/bin/env bash
# Install a real Keystone from PyPI (with gunicorn) into its own virtualenv, so the
# image-service tests authenticate Glance, castellan and openstacksdk for real.
# Idempotent: when the virtualenv already imports Keystone's WSGI app, nothing is done.
# Usage: scripts/install-keystone.sh [VENV_DIR]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/venv-install.sh
. "${here}/scripts/venv-install.sh"

install_service_venv keystone "${1:-${here}/.venv-keystone}" '
import keystone.server.wsgi
import keystone.cmd.manage
import gunicorn
' keystone gunicorn
