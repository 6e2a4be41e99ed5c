# Sourced by scripts/install-barbican.sh, install-glance.sh and install-keystone.sh: each real
# service the tests start lives in its own virtualenv, installed from PyPI only when the
# existing one cannot import what the tests need (so running the scripts again is cheap).

# venv_imports VENV CODE: true when VENV's python runs CODE (a few imports) without error.
venv_imports() {
    [ -x "$1/bin/python" ] && "$1/bin/python" - <<<"$2" >/dev/null 2>&1
}

# install_service_venv NAME VENV CODE PACKAGE...: leave VENV alone when it runs CODE; else
# make it afresh with PACKAGE... (pip's own arguments), pinned by constraints/NAME.txt (every
# package at the version the suite passed with), and check CODE again.
install_service_venv() {
    local name="$1" venv="$2" code="$3"
    shift 3
    if venv_imports "${venv}" "${code}"; then
        echo "${name} already installed in ${venv}"
        return 0
    fi
    rm -rf "${venv}"
    "${PYTHON:-python3}" -m venv "${venv}"
    "${venv}/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
    "${venv}/bin/python" -m pip install --quiet -c "${here}/constraints/${name}.txt" "$@"
    if ! venv_imports "${venv}" "${code}"; then
        echo "${name} installed in ${venv} but does not import" >&2
        exit 1
    fi
    echo "${name} installed in ${venv}"
}
