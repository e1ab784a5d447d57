VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clew-installed

.PHONY: setup demo test lint format bench clean

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

test: $(STAMP) lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/forward.py

clean:
	rm -rf $(VENV) build *.egg-info
