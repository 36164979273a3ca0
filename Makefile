# The two commands of the quick start: `make run` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: setup system-deps run test lint services bench-gateway migration

setup: system-deps $(VENV)/.installed

# Debian packages: bubblewrap for sandboxes, a compiler for wheels built from source, and
# what the tests drive (skopeo, umoci, chromium).
system-deps:
	scripts/system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build on disk, so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[engine,test]'
	touch $@

run: setup
	$(BIN)/mediagate up

services:
	scripts/services.sh

lint: setup
	$(BIN)/ruff check .

test: setup services
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench-gateway: setup services
	$(BIN)/python bench/gateway_overhead.py

# Write a new migration from the models: make migration m="what changed"
migration: setup
	$(BIN)/alembic -c alembic.ini revision --autogenerate -m "$(m)"
	$(BIN)/ruff check --fix -q migrations
