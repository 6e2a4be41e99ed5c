# imgcrypt — the two commands of the README, and the ones behind them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Every package pinned to a version the suite passed with (OpenStack's upper-constraints); the
# ranges in pyproject.toml say what may work, this file what was tested. `make test-latest`
# tries the newest releases the ranges admit; `make constraints` adopts them once they pass.
CONSTRAINTS := upper-constraints.txt
EXTRAS := cloud,devices,dev
LATEST := .venv-latest

.PHONY: demo test test-latest constraints venv tools barbican glance keystone lint bench fuzz clean \
	apidoc sample-config releasenotes

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP) tools barbican glance keystone lint apidoc releasenotes
	$(BIN)/pytest

$(STAMP): pyproject.toml $(CONSTRAINTS) imgcrypt/crypto/_xtsmul.c imgcrypt/crypto/_evpxts.c
	-scripts/install-tools.sh build  # libssl-dev; without it the slower XTS path is built
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

# The suite against the newest release of every package the ranges admit (the services stay on
# their own constraints): prints which packages moved since upper-constraints.txt, then tests.
test-latest: tools barbican glance keystone
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'
	$(PYTHON) scripts/constraints.py freeze $(LATEST) $(LATEST)/constraints.txt
	@echo "packages that moved since $(CONSTRAINTS):"
	@$(PYTHON) scripts/constraints.py moved $(CONSTRAINTS) $(LATEST)/constraints.txt
	$(LATEST)/bin/pytest

# Adopt what `make test-latest` just passed with (commit the file with a release note).
constraints:
	test -f $(LATEST)/constraints.txt || { echo "run make test-latest first" >&2; exit 1; }
	cp $(LATEST)/constraints.txt $(CONSTRAINTS)

venv: $(STAMP)

# qemu-img, cryptsetup and grub-fstest from Debian, installed only when missing.
tools:
	scripts/install-tools.sh

# A real Barbican from PyPI in its own virtualenv (.venv-barbican), for the key-manager tests.
barbican:
	scripts/install-barbican.sh

# A real Glance 33 (.venv-glance, with imgcrypt's import plugins installed into it) and a real
# Keystone (.venv-keystone), each from PyPI in its own virtualenv, for the image-service tests.
glance:
	scripts/install-glance.sh

keystone:
	scripts/install-keystone.sh

lint: $(STAMP)
	$(BIN)/ruff check imgcrypt tests scripts fuzz
	$(BIN)/mypy

# The API reference from the docstrings (Sphinx autodoc, docs/api), warnings and broken
# references as errors; tests/test_apidoc.py also fails when a public name is left out.
apidoc: $(STAMP)
	rm -rf docs/api/generated  # autosummary's pages, made anew: none left from a removed module
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs/api build/apidoc/html

# etc/imgcrypt.conf.sample from the Glance plugins' options (the oslo.config.opts entry point);
# tests/test_conventions.py fails when the checked-in sample is stale.
sample-config: $(STAMP)
	$(BIN)/oslo-config-generator --config-file etc/oslo-config-generator/imgcrypt.conf

# One reno note per user-visible change (`reno new SLUG`); lint reads them through git.
releasenotes: $(STAMP)
	$(BIN)/reno lint

# The data path against cp, cat | cat, openssl and qemu-img, then upload and download against
# curl on the real Glance the tests start (hence the services' virtualenvs).
bench: $(STAMP) tools barbican glance keystone
	$(BIN)/python scripts/bench.py --http

fuzz: $(STAMP)
	$(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python scripts/fuzz.py

clean:
	rm -rf $(VENV) $(LATEST) .venv-lowest .venv-barbican .venv-glance .venv-keystone demo-out bench-out .pytest_cache .mypy_cache .hypothesis
