# Two commands on a fresh machine with only python3: `make demo` and `make test`.
# Another interpreter: `make test PYTHON=/path/to/python3.13` uses its own venv, .venv-3.13.
PYTHON ?= python3
ifeq ($(PYTHON),python3)
VENV := .venv
else
PYVERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(PYVERSION),)
$(error PYTHON=$(PYTHON) is not a working Python interpreter)
endif
VENV := .venv-$(PYVERSION)
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install graphviz demo test test-ray lint docs bench bench-peers mutation clean

install: $(STAMP) graphviz

# Pipeline.visualize() draws with Graphviz's `dot` (Debian's graphviz package).
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
		echo "no dot program; installing Debian's graphviz"; \
		apt-get update -qq && apt-get install -y -qq graphviz; \
	}

# Debian's python3 ships without venv/ensurepip; install python3-venv when that is the case.
$(STAMP): pyproject.toml
	@if ! $(PYTHON) -m venv --help >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then \
		echo "python3 has no venv module; installing python3-venv"; \
		apt-get update -qq && apt-get install -y -qq python3-venv; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) examples/demo.py

test: install
	$(PY) -m pytest
	$(MAKE) --no-print-directory docs PYTHON=$(PYTHON) SITE=$(VENV)/site
	$(MAKE) --no-print-directory test-ray PYTHON=$(PYTHON)

# Ray listens on every network interface, even when told 127.0.0.1: the tests that
# start it (marked `ray`, and `daft_ray` for Daft on Ray, left out of a plain pytest
# run) run in a private network namespace with only loopback. Daft's runner is set
# once per process: the Daft-on-Ray tests run in a pytest process of their own.
# Needs root (unshare) and iproute2 (ip). Each run has a Ray temp directory of its own
# (suites of two interpreters side by side share nothing); when it fails, Ray's logs
# are printed: a driver whose raylet died exits at once, status 1, saying nothing.
IP := $(shell command -v ip 2>/dev/null || echo /usr/sbin/ip)
test-ray: install
	@test -x $(IP) || (apt-get update -qq && apt-get install -y -qq iproute2)
	@ray_tmp=$$(mktemp -d /tmp/plait-ray.XXXXXX); \
	RAY_TMPDIR=$$ray_tmp RAY_USAGE_STATS_ENABLED=0 PLAIT_NETNS=1 unshare -n sh -c \
		'$(IP) link set lo up && $(PY) -m pytest -m ray -p no:cacheprovider && \
		exec $(PY) -m pytest -m daft_ray -p no:cacheprovider'; \
	status=$$?; \
	if [ $$status -ne 0 ]; then echo "Ray tests failed (status $$status); Ray's logs:"; \
		$(PY) tools/ray_logs.py $$ray_tmp; fi; \
	rm -rf $$ray_tmp; exit $$status

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The docs site (mkdocs.yml): strict, so a broken link or a missing API reference fails
# (`make test` builds it too). SITE: where it goes; `make test` builds into the venv, so
# suites of two interpreters side by side never share a directory.
SITE ?= site
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(SITE)

bench: install
	$(PY) benchmarks/run.py

# plait beside HyperNodes, pipefunc, Apache Hamilton and daglite (pinned, one venv each under
# benchmarks/peers/.venvs/, made on first use): docs/performance.md. Not part of `make test`.
bench-peers: install
	$(PY) benchmarks/peers/run.py $(PEERS)

# Mutation testing, not in CI (docs/development.md): `make mutation MODULES="graph engine.local.controls"`.
# Modules are dotted under plait; the set mutmut may mutate is [tool.mutmut] in pyproject.toml.
MODULES ?= graph cache.fingerprint bridge.loops engine.request engine.local.controls engine.local.scheduler engine.local.mapping
mutation: install
	$(PY) -m pip install -q -e '.[mutation]'
	$(VENV)/bin/mutmut run $(foreach m,$(MODULES),'plait.$(m).*')
	$(VENV)/bin/mutmut results  # the surviving mutants: `mutmut show NAME` prints one
	$(PY) tools/mutation_scores.py $(MODULES)

clean:
	rm -rf .venv .venv-* site .pytest_cache .mypy_cache .ruff_cache .hypothesis
