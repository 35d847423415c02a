# Pilothouse: every target sets up what it needs, so `make demo` and
# `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/pilothouse/v1/*.proto)

.PHONY: install gen lint test demo run bench faults faults-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Regenerate the Python stubs beside each .proto (committed).
gen: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos \
		--python_out=protos --pyi_out=protos --grpc_python_out=protos $(PROTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff check server clients tests faults
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

# The fault suite (see README, Reliability): `make faults` runs everything,
# `make faults-quick` (or FAULTS_ARGS=--quick) a few cases per category.
faults: $(STAMP)
	bash .ci/install-postgres
	$(PY) faults/run.py $(FAULTS_ARGS)

faults-quick: $(STAMP)
	bash .ci/install-postgres
	$(PY) faults/run.py --quick --no-write

clean:
	rm -rf $(VENV)
