# Pilothouse: every target sets up what it needs, so `make demo` and
# `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/pilothouse/v1/*.proto)
# The TypeScript client: its targets need Node.js 20+ and npm.
TS := clients/typescript
TS_STAMP := $(TS)/node_modules/.installed
NODE := $(shell command -v node 2>/dev/null)
NODE_MISSING = echo "node is not installed: skipping the TypeScript client ($@); install Node.js 20+ to run it"
# The web console (clients/web), built into server/pilothouse/web/console
# (committed, so the package ships it and no install needs Node.js).
WEB := clients/web
WEB_STAMP := $(WEB)/node_modules/.installed

.PHONY: install gen gen-ts web lint lint-ts lint-web test test-ts demo run bench faults faults-quick clean

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

# npm ci from the lock file; install scripts are not needed (buf's binary
# comes in its platform package).
$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	node -e 'if (+process.versions.node.split(".")[0] < 20) { console.error("the TypeScript client needs Node.js 20+, this is " + process.version); process.exit(1) }'
	cd $(TS) && npm ci --ignore-scripts --no-audit --no-fund
	touch $(TS_STAMP)

# Regenerate the TypeScript stubs in clients/typescript/src/gen (committed).
gen-ts: $(TS_STAMP)
	cd $(TS) && npm run --silent gen

$(WEB_STAMP): $(WEB)/package.json $(WEB)/package-lock.json
	cd $(WEB) && npm ci --ignore-scripts --no-audit --no-fund
	touch $(WEB_STAMP)

# Rebuild the web console's bundle (committed; `make lint` checks it is
# fresh). esbuild's binary comes in its platform package.
web:
ifeq ($(NODE),)
	@echo "node is not installed: cannot build the web console; install Node.js 20+"; exit 1
else
	$(MAKE) --no-print-directory $(WEB_STAMP)
	cd $(WEB) && npm run --silent build
endif

# mypy: the SDK strictly; the server with pyproject.toml (every module, no baseline).
lint: $(STAMP)
	$(VENV)/bin/ruff check server clients tests faults
	$(VENV)/bin/mypy --config-file clients/python/pyproject.toml
	$(VENV)/bin/mypy
	npx --yes @bufbuild/buf@1.75.0 lint
	$(MAKE) --no-print-directory lint-ts
	$(MAKE) --no-print-directory lint-web

lint-ts:
ifeq ($(NODE),)
	@$(NODE_MISSING)
else
	$(MAKE) --no-print-directory $(TS_STAMP)
	cd $(TS) && npm run --silent lint
endif

# tsc, prettier, and the committed bundle against a fresh build.
lint-web:
ifeq ($(NODE),)
	@$(NODE_MISSING)
else
	$(MAKE) --no-print-directory $(WEB_STAMP)
	cd $(WEB) && npm run --silent lint
endif

test: $(STAMP)
	bash .ci/install-postgres
	bash .ci/install-chromium
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-ts

# The TypeScript client's tests start pilothouse-server and pilothouse-tools
# from $(VENV), so they need `make install` too.
test-ts: $(STAMP)
ifeq ($(NODE),)
	@$(NODE_MISSING)
else
	$(MAKE) --no-print-directory $(TS_STAMP)
	cd $(TS) && npm test
endif

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
