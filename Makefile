# iotpipe — `make run` and `make test` work from a fresh clone on Debian (as root or with sudo).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests, benchmarks and production path need: real servers, no mocks
# (Prometheus scrapes /metrics in a test and promtool checks deploy/prometheus/; InfluxDB
# 1.6 and wrk serve the API benchmark; the dashboard is tested in Debian's Chromium,
# never in a browser build a test tool downloads).
SYSTEM_PACKAGES := postgresql mosquitto openssl nats-server systemd docker-compose prometheus influxdb wrk chromium
# The dashboard's front-end packages (package-lock.json) and where their built files go,
# beside our own (web/): a git-ignored folder the package declares as data, so a wheel
# carries them.
STATIC := iotpipe/api/static
WEB_SOURCES := $(wildcard web/*.html web/*.css web/*.js web/*/*.js)

.PHONY: install system-packages node static run test bench screenshots fuzz lint clean

install: $(STAMP) static

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	$(PYTHON) -m venv $(VENV) || { apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs the Debian packages in $$missing, only when we may (root); otherwise says what
# to install.
INSTALL_MISSING = if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing system packages:$$missing — run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

# Installs only what is missing.
system-packages:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(INSTALL_MISSING)
	@$(MAKE) --no-print-directory node

# node and npm: any install will do (NodeSource's nodejs carries its own npm, which
# Debian's npm package would conflict with); when a command is missing, Debian's package.
node:
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	$(INSTALL_MISSING)

# The dashboard's files: uPlot's built ES module and CSS from node_modules (npm ci, from
# the lockfile), and our own HTML, CSS and ES modules from web/.
static: $(STATIC)/.built

node_modules/.package-lock.json: package.json package-lock.json
	@$(MAKE) --no-print-directory node
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(STATIC)/.built: node_modules/.package-lock.json $(WEB_SOURCES)
	rm -rf $(STATIC)
	mkdir -p $(STATIC)/vendor
	cp -R web/. $(STATIC)/
	cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE $(STATIC)/vendor/
	@touch $@

run: install
	$(BIN)/iotpipe run

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check iotpipe tests benchmarks
	$(BIN)/ruff format --check iotpipe tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python benchmarks/run_all.py

# The README's pictures of the dashboard (docs/dashboard*.png), taken by the browser test
# that screenshots every page against a running `iotpipe run`.
screenshots: install
	IOTPIPE_SCREENSHOTS=docs $(BIN)/pytest -q tests/dashboard/test_dashboard.py -k screenshots

# Fuzz the decoders for FUZZ_SECONDS (default 60); see tests/fuzz/fuzz_decoders.py to run longer.
FUZZ_SECONDS ?= 60
fuzz: install
	$(BIN)/python tests/fuzz/fuzz_decoders.py -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache node_modules $(STATIC)
