# Two commands do all of the set-up: `make test` and `make demo`.
# Both create .venv and install into it once; later runs only re-install when
# pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The torch build the suite is tested with. On a GPU cluster, override with the
# CUDA build that matches the driver, e.g. make TORCH_SPEC="torch==2.14.1 torchvision==0.29.1".
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
QUIET := { grep -v 'is ignored' || true; }

TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install lint test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	bash scripts/ffmpeg_libs.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET)
	$(PY) -m pip install -q --no-cache-dir $(TORCH_SPEC) 2>&1 | $(QUIET)
	$(PY) -m pip install -q --no-cache-dir -e '.[dev]' 2>&1 | $(QUIET)
	touch $(STAMP)

# Some tests talk to real services on this machine: a one-node SLURM cluster and a PostgreSQL
# server (tests/services.sh; installing and starting them needs root). `make test` starts the ones
# that are not running and stops them afterwards; without root those tests skip (CI sets
# SCALING_REQUIRE_SERVICES=1 so that they fail instead).
SLURM_DIR ?= /tmp/scaling-slurm
export SLURM_CONF ?= $(SLURM_DIR)/slurm.conf
export SCALING_PG_URL ?= postgresql://postgres@127.0.0.1:55432/scaling

# Two pytest-xdist workers (the tests that share the SLURM cluster and PostgreSQL run on one of them,
# one after the other: tests/conftest.py); `make test PYTEST_XDIST=` runs everything in one process.
PYTEST_XDIST ?= -n 2 --dist loadgroup

test: $(STAMP)
	@bash tests/services.sh up; \
	rc=0; $(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS) || rc=$$?; \
	bash tests/services.sh down; \
	exit $$rc

# Lint with ruff (the rules are in pyproject.toml); `.ci/run` runs it before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV)/bin/scaling demo

clean:
	rm -rf $(VENV) runs .pytest_cache
