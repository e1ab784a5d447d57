VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clew-installed

.PHONY: setup demo test lint format bench clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/clew demo

lint: $(STAMP)
	$(VENV)/bin/ruff check clew tests bench examples
	$(VENV)/bin/ruff format --check clew tests bench examples

format: $(STAMP)
	$(VENV)/bin/ruff check --fix clew tests bench
	$(VENV)/bin/ruff format clew tests bench

# the explorer's browser tests drive Debian's Chromium (Playwright's own download does not work here)
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	  else echo "no /usr/bin/chromium and no root: the browser tests will be skipped (apt-get install chromium)"; fi; }

test: $(STAMP) lint chromium
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/forward.py

clean:
	rm -rf $(VENV) build *.egg-info
