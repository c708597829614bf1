# bareos-hyperv: every set-up step a fresh Debian/Ubuntu machine needs is here.
#   make demo   - run the main job against the built-in simulated cluster
#   make test   - lint, type-check and run every test
#   make bench  - long benchmarks (throughput ratios against Samba's own client)
#   make dist   - wheel and sdist of the product into dist/ (no test rig)
#   make manual - the manual (docs/manual, Sphinx, warnings as errors) into build/manual/
#   make deb    - the Debian package bareos-filedaemon-hyperv-python-plugin into dist/
#                 (its Python dependencies from PyPI; DEB_ARGS="--deps-from .venv/bin/python" offline)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# python3-venv: the Debian package's private environment is made with Debian's python3 (tests/packaging).
DEB_PACKAGES := samba smbclient qemu-utils python3-venv
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps debs venv lint typecheck test unit test-py39 demo bench clean dist deb manual

all: test

# Debian packages the tests and the demo need (smbd, smbclient, qemu-img).
debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

deps: debs venv

lint: venv
	$(VENV)/bin/ruff check bareos_hyperv hvsim fdsim tests bench packaging

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it collected no test: that fails the target too.
unit: deps
	$(PY) -m pytest $(PYTEST_ARGS)

test: deps lint typecheck unit

# Bareos on RHEL 9 embeds Python 3.9: run the whole suite on it too when this machine has one.
PY39 ?= $(shell for p in python3.9 /usr/bin/python3.9 $$HOME/.pyenv/versions/3.9*/bin/python3.9; do \
	  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 9)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
test-py39: debs
	@if [ -z "$(PY39)" ]; then echo "python3.9 not found: skipping the Python 3.9 run"; exit 0; fi; \
	[ -x .venv39/bin/python ] || $(PY39) -m venv .venv39; \
	.venv39/bin/python -m pip install -q --upgrade pip && .venv39/bin/python -m pip install -q -e '.[test]' && \
	.venv39/bin/python -m pytest $(PYTEST_ARGS)

demo: deps
	$(PY) -m bareos_hyperv.cli demo

bench: deps
	$(PY) -m bench $(BENCH_ARGS)

# The packages an administrator installs (docs/install.md).
dist: venv
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .

deb: dist
	$(PY) packaging/debian/build.py --wheel $$(ls dist/bareos_hyperv-*-py3-none-any.whl) --output dist $(DEB_ARGS)

# The manual: reStructuredText in docs/manual; options.rst and troubleshooting.rst are generated from
# the code by docs/manual/generate.py (tests/docs checks they are current).
manual: venv
	$(PY) docs/manual/generate.py
	$(PY) -m sphinx -W --keep-going -q -b html docs/manual build/manual
	@echo "manual: build/manual/index.html"

clean:
	rm -rf $(VENV) .venv39 build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
