# stockwire: `make demo` to see it, `make test` to prove it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install web demo test lint serve clean

WEB      := clients/web
WEB_DEPS := $(WEB)/node_modules/.package-lock.json
WEB_SRC  := $(WEB)/build.mjs $(wildcard $(WEB)/src/*.js)
WEB_OUT  := $(WEB)/dist/.built

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "stockwire needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) web

# The screens' bundle (msgpack + page code, esbuild) served as /static/*.js.
$(WEB_DEPS): $(WEB)/package.json $(WEB)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "make web needs Node.js 20+ and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	cd $(WEB) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(WEB_OUT): $(WEB_DEPS) $(WEB_SRC)
	cd $(WEB) && node build.mjs
	@touch $@

web: $(WEB_OUT)      ## build the overlay and host pages into clients/web/dist/

demo: install            ## run a gateway with a simulated flash sale (no Redis needed)
	$(BIN)/stockwire demo

serve: install           ## run a gateway against STOCKWIRE_REDIS_URL
	$(BIN)/stockwire serve

test: install            ## the whole suite, against redis-server instances it starts itself
	@scripts/ensure-redis.sh
	@scripts/ensure-chromium.sh
	cd $(WEB) && node --test test/*.test.mjs
	$(BIN)/pytest -q

# Benchmarks (docs/benchmarks.md): gateway on CPU 0, load on CPU 1; results/bench/*.json + PNG.
# make bench BENCH=fanout BENCH_ARGS="--runs 3 --profile"   (default: every scenario once)
.PHONY: bench
bench: install
	$(BIN)/python -m loadtest.bench $(or $(BENCH),all) --pin $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info $(WEB)/dist $(WEB)/node_modules

# Rehearse a flash sale with Locust (docs/loadtest.md).  Without HOST it starts a
# redis-server and a gateway of its own; reports land in results/<scenario>-<time>/.
# (HOST counts only when it is a URL: csh's HOST variable, the machine's name, is ignored.
# REDIS_URL counts only on make's command line: an exported one, common on
# Heroku-style hosts, must not send a local rehearsal's rooms to that Redis.)
#   make loadtest SCENARIO=kol-surge ARGS="--speed 5 --peak-viewers 400"
#   make loadtest SCENARIO=tshirt-sellout HOST=ws://gw:8765 REDIS_URL=redis://redis:6379/0
SCENARIO ?= kol-surge
LOADTEST_REDIS_URL = $(if $(filter command line,$(origin REDIS_URL)),$(REDIS_URL))
.PHONY: loadtest
loadtest: install        ## rehearse a flash sale: SCENARIO=… [HOST=ws://… REDIS_URL=…] [ARGS=…]
	@$(if $(findstring ://,$(HOST)),true,scripts/ensure-redis.sh)
	$(BIN)/python -m loadtest.run --scenario $(SCENARIO) \
		$(if $(findstring ://,$(HOST)),--host $(HOST)) \
		$(if $(LOADTEST_REDIS_URL),--redis-url $(LOADTEST_REDIS_URL)) -- $(ARGS)
