# Sluice: `make demo` runs the main job end to end; `make test` runs the suite.
# Both install what they need (ops/scripts/bootstrap.sh) and start what they
# need (ops/scripts/stack.sh); state lives under SLUICE_HOME (default .sluice).

SHELL := /bin/bash
export SLUICE_HOME ?= $(CURDIR)/.sluice
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STACK := ops/scripts/stack.sh

.PHONY: bootstrap up down status demo test lint typecheck unit bench clean

bootstrap:
	@ops/scripts/bootstrap.sh

up: bootstrap
	@$(STACK) up

down:
	@$(STACK) down

status:
	@$(STACK) status

demo: bootstrap
	@$(PY) -m ops.demo.run

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: bootstrap
	$(VENV)/bin/mypy

# The suite needs the stack; it is started here and always stopped again,
# under its own SLUICE_HOME so a developer's running stack is left alone.
test: bootstrap
	@ops/scripts/test.sh

# Benchmarks print figures (they assert nothing); they run a stack of their
# own under .sluice-bench on ports from 25000.
bench: bootstrap
	@$(PY) -m ops.bench

clean: down
	rm -rf $(SLUICE_HOME)
