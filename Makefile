# relaycast — the two commands of the README:
#   make serve   install (once) and run the service on http://127.0.0.1:8080
#   make test    install system + Python test dependencies (once) and run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
APT_PACKAGES := ffmpeg chromium-headless-shell nginx redis-server coturn postgresql iproute2
# postgresql: the tests start their own server (initdb/pg_ctl in a temporary directory);
# Debian's package must not create and start a system cluster, hence postgresql-common
# first with create_main_cluster = false.  iproute2: the adaptive-delivery tests put a browser behind
# a rate-limited veth in a network namespace (ip netns, tc tbf; they skip without root).
NO_MAIN_CLUSTER := sed -ri 's/^\#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
STAMP := .make

.PHONY: serve-lan serve test install install-test lint

$(STAMP)/install: pyproject.toml web/package.json web/package-lock.json
	@mkdir -p $(STAMP)
	$(PIP) install -q -e .
	@if command -v npm >/dev/null; then npm ci --prefix web --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the watch page's hls.js fallback is unavailable"; fi
	@touch $@

$(STAMP)/install-test: pyproject.toml web/package.json web/package-lock.json
	@mkdir -p $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends postgresql-common && \
	  $(if $(filter 0,$(shell id -u)),,sudo) $(NO_MAIN_CLUSTER) && \
	  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $$missing; \
	  $(if $(filter 0,$(shell id -u)),,sudo) sh -c 'pgrep -x nginx >/dev/null && nginx -s stop 2>/dev/null; pkill -x redis-server; pkill -x turnserver; true'; \
	fi
	$(PIP) install -q -e ".[test]"
	npm ci --prefix web --no-audit --no-fund --loglevel=error
	@touch $@ $(STAMP)/install

install: $(STAMP)/install
install-test: $(STAMP)/install-test

serve: $(STAMP)/install
	relaycast serve

serve-lan: $(STAMP)/install
	relaycast serve --host 0.0.0.0 --port 8443 --self-signed

test: $(STAMP)/install-test
	$(PYTHON) -m pytest -q

lint:
	ruff check relaycast common sfu signaling turn hls_bridge ingest loadtest tests
	mypy relaycast common sfu signaling turn hls_bridge ingest --ignore-missing-imports
