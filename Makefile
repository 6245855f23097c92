# One command to set up and run the tests, one for the demo. Both work from a clean clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: test demo lint setup redis

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# The tests start their own redis-server on a free port; install it where missing.
redis:
	@command -v redis-server >/dev/null || { \
	  echo "redis-server not found: installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq redis-server; }

lint: setup
	$(VENV)/bin/ruff check src tests examples
	$(VENV)/bin/ruff format --check src tests examples
	$(VENV)/bin/mypy --strict src

test: setup redis lint
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/uvicorn --app-dir examples portal_app:app --port $(PORT)
