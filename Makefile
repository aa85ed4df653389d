# One Makefile for people, hooks and CI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_WORKERS ?= 3

.PHONY: run test test-long lint bench bench-fast bench-quick bench-plot bench-profile bench-push bench-store install browser clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch node_modules/.installed

install: $(STAMP) node_modules/.installed

# Debian's Chromium for the browser tests (a test tool's own browser download does not work here).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The embedded default: SQLite file backstage.db, in-process relay, demo data and sign-in links.
run: install
	$(PY) run_server.py --demo

# The project's modules are compiled once first: the suite starts hundreds of server processes,
# and where PYTHONDONTWRITEBYTECODE is set (this machine) each would compile them again (~0.4 s).
test: install browser
	$(PY) -m compileall -q chat notifications webhooks run_server.py
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=15

# The long runs (docs/reliability.md, "Long runs"): a soak of SOAK_SECONDS (default 1800) and a
# reconnect storm of STORM_CLIENTS (default 1000). Not part of `make test`; figures in long-results/.
test-long: install
	$(PY) -m pytest -q -p no:cacheprovider -s tests/long

lint: $(STAMP)
	$(VENV)/bin/ruff check chat notifications webhooks tests bench run_server.py publisher
	$(VENV)/bin/mypy

# Backstage next to the reference Socket.IO peers (docs/performance.md). Needs ../shared/bench
# (or BENCH_HARNESS=...), Node.js, MariaDB and Redis on 127.0.0.1. Not part of CI.
bench: install          ## 7 targets x fixed+ramp, ramp5 (+2-core pairs), reconnect storm, 3 repetitions
	$(PY) bench/run_bench.py $(BENCH_ARGS)

bench-fast: install     ## all targets, 3 repetitions, fixed load only (~13 min; no max rate)
	$(PY) bench/run_bench.py --scenarios fixed $(BENCH_ARGS)

bench-quick: install    ## 1 rep: ramp5 for node, py-mysql, backstage + both 2-core pairs; reconnect storm (~7 min quiet host)
	$(PY) bench/run_bench.py --quick $(BENCH_ARGS)

# docs/latency-vs-load.png from the newest results file with ramp steps (or RESULTS=bench-results/X.jsonl)
bench-plot: $(STAMP)
	$(PY) bench/run_bench.py --plot $(RESULTS) $(BENCH_ARGS)

bench-profile: install  ## py-spy profiles of one Backstage process under the bench load
	$(PY) bench/run_bench.py --profile $(BENCH_ARGS)

bench-push: $(STAMP)     ## push throughput vs the bare SDK loop, then the creator's post to 10,000 / 100,000 patrons (~4 min)
	$(PY) bench/push_bench.py
	$(PY) bench/push_bench.py --fanout

# Messages stored per second through ChatService + the group-commit writer, in process, on a fresh
# MariaDB database and SQLite file: 500 senders over 100 conversations, then into one (~1 min).
bench-store: $(STAMP)
	flock /tmp/backstage-bench.lock $(PY) bench/store_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules backstage.db backstage.db-*
