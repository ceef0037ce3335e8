# iotpipe — `make run` and `make test` work from a fresh clone on Debian (as root or with sudo).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests and the production path need: real servers, no mocks.
SYSTEM_PACKAGES := postgresql mosquitto openssl nats-server systemd docker-compose
# Only the benchmarks need these (InfluxDB 1.x: the import benchmark's peer).
BENCH_PACKAGES := influxdb

.PHONY: install system-packages run test bench fuzz lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	$(PYTHON) -m venv $(VENV) || { apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs only what is missing, and only when we may (root); otherwise says what to install.
system-packages:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES) $(EXTRA_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing system packages:$$missing — run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

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
	@$(MAKE) --no-print-directory system-packages EXTRA_PACKAGES="$(BENCH_PACKAGES)"
	$(BIN)/python benchmarks/run_all.py

# Fuzz the decoders for FUZZ_SECONDS (default 60); see tests/fuzz/fuzz_decoders.py to run longer.
FUZZ_SECONDS ?= 60
fuzz: install
	$(BIN)/python tests/fuzz/fuzz_decoders.py -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
