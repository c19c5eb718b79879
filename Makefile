# Two entry points for a fresh machine: `make demo` (headless end-to-end run) and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The web page's tests drive Debian's Chromium through Playwright, which never downloads a browser of its own.
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser test lint demo addon clean

setup: $(STAMP) browser

browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "make: $(CHROMIUM) is missing; install it (sudo apt-get install chromium): the web page tests fail without it" >&2; \
	  fi; \
	fi

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, so the engine's `torch>=2.5` is satisfied without CUDA downloads.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m demo.run_demo

# The Blender extension zip, built and validated with the builder inside the bpy wheel (docs/ADDON.md).
DIST ?= dist
addon: $(STAMP)
	$(PY) -m demo.extension $(DIST)

clean:
	rm -rf $(VENV) demo_out dist .pytest_cache .ruff_cache
