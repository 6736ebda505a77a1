# Tollgate's front door. `make help` lists the targets.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := gen/.generated

.DEFAULT_GOAL := help
.PHONY: help install proto run test test-faults soak demo lint format bench clean \
	browser vendor-js

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q grpcio-tools==1.85.1
	$(MAKE) --no-print-directory proto
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP) $(GEN_STAMP) browser ## Create the virtualenv, install, generate code

# Headless Chromium for the dashboard's browser tests, from Debian's packages.
# Installed only as root with apt-get; otherwise those tests are skipped.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -q chromium chromium-driver; \
		else \
			echo "chromium not installed: the dashboard browser tests will be skipped"; \
		fi; \
	fi

UPLOT_VERSION := 1.6.32
VENDOR_DIR := services/dashboard/static/vendor

vendor-js: ## Refresh the vendored uPlot charting library from the npm registry
	rm -rf .vendor-tmp && mkdir -p .vendor-tmp
	cd .vendor-tmp && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-*.tgz
	cp .vendor-tmp/package/dist/uPlot.iife.min.js .vendor-tmp/package/dist/uPlot.min.css $(VENDOR_DIR)/
	cp .vendor-tmp/package/LICENSE $(VENDOR_DIR)/uPlot.LICENSE
	rm -rf .vendor-tmp

$(GEN_STAMP): $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=gen --pyi_out=gen \
		--grpc_python_out=gen $(PROTOS)
	find gen -type d -exec touch {}/__init__.py \;
	rm -f gen/__init__.py
	touch $@

proto: ## Generate the protobuf and gRPC code into gen/
	rm -f $(GEN_STAMP)
	$(MAKE) --no-print-directory $(GEN_STAMP)

run: install ## Start the whole stack in the foreground (Ctrl-C stops it)
	$(PY) -m services.stack --data-dir var

test: install ## Run the test suite against real Redis and ClickHouse
	$(PY) -m pytest -q

test-faults: install ## Run the full fault-injection suite
	TOLLGATE_FAULTS=full $(PY) -m pytest -q -m fault tests/faults

soak: install ## Soak the stack at steady load (SOAK_SECONDS, default 600)
	TOLLGATE_SOAK_SECONDS=$${SOAK_SECONDS:-600} $(PY) -m pytest -q -s -m soak tests/faults

demo: install ## Start the stack with the simulator and send a mix of calls
	$(PY) -m services.demo --data-dir var/demo

bench: install ## Benchmark Tollgate beside direct calls and the peers
	$(PY) -m bench

lint: install ## Check formatting, lint and types
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy

format: install ## Format the code
	$(VENV)/bin/ruff format services tests bench
	$(VENV)/bin/ruff check --fix services tests bench

clean: ## Remove the virtualenv, generated code and local data
	rm -rf $(VENV) gen var .pytest_cache .ruff_cache .mypy_cache
