# relaycast — the two commands of the README:
#   make serve   install (once) and run the service on http://127.0.0.1:8080
#   make test    install system + Python test dependencies (once) and run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
APT_PACKAGES := ffmpeg chromium-headless-shell
STAMP := .make

.PHONY: serve test install install-test lint

$(STAMP)/install: pyproject.toml
	@mkdir -p $(STAMP)
	$(PIP) install -q -e .
	@touch $@

$(STAMP)/install-test: pyproject.toml
	@mkdir -p $(STAMP)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	$(PIP) install -q -e ".[test]"
	@touch $@ $(STAMP)/install

install: $(STAMP)/install
install-test: $(STAMP)/install-test

serve: $(STAMP)/install
	relaycast serve

test: $(STAMP)/install-test
	$(PYTHON) -m pytest -q

lint:
	ruff check sfu signaling hls_bridge loadtest tests
	mypy sfu signaling hls_bridge --ignore-missing-imports
