# One command to set up and run the tests, one for the demo. Both work from a clean clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: test demo lint setup redis chromium

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

# The browser test drives Debian's Chromium (Playwright cannot download its own here).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "chromium not found: installing it with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq chromium; }

lint: setup
	$(VENV)/bin/ruff check src tests examples
	$(VENV)/bin/ruff format --check src tests examples
	$(VENV)/bin/mypy --strict src

test: setup redis chromium lint
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/uvicorn --app-dir examples portal_app:app --port $(PORT)

# What the 2FA layer costs per request (docs/performance.md): every variant under
# uvicorn + wrk, in one run. BENCH_ARGS="--duration 10 --repeats 5" for longer runs.
.PHONY: bench
bench: setup redis
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/run.py $(BENCH_ARGS)
