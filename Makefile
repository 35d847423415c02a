# Pilothouse: every target sets up what it needs, so `make demo` and
# `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/pilothouse/v1/*.proto)

.PHONY: install gen lint test demo run bench clean

install: $(STAMP)

# The server distribution depends on the SDK (clients/python) by path, which
# pip installs as a copy; the second step makes that copy editable too, so
# the SDK's sources are the ones imported while developing.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps -e ./clients/python
	touch $(STAMP)

# Regenerate the Python stubs of protos/ into the SDK (committed), with
# mypy-protobuf's type stubs for messages and for the sync and aio stubs.
STUBS := clients/python
gen: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--python_out=$(STUBS) --mypy_out=quiet:$(STUBS) \
		--grpc_python_out=$(STUBS) --mypy_grpc_out=quiet:$(STUBS) $(PROTOS)
	$(PY) clients/python/gen_events.py

# mypy: the SDK strictly; the server against the baseline in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check server clients tests
	$(VENV)/bin/mypy --config-file clients/python/pyproject.toml
	$(VENV)/bin/mypy
	npx --yes @bufbuild/buf@1.75.0 lint

test: $(STAMP)
	bash .ci/install-postgres
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) -m pilothouse.devstack demo

run: $(STAMP)
	$(PY) -m pilothouse.devstack run

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV)
