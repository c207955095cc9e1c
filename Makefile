# One entry point for developers and CI. `make run` and `make test` work on a fresh machine:
# they create the virtualenv (the package with its worker, embedded and dev extras), and
# services that are neither configured nor running locally are started embedded under
# .jobplatform/.

# The first interpreter that runs and is 3.11 to 3.14 (pyenv may list shims that do not run).
# 3.11 and 3.12 come first: the embedded PostgreSQL and Redis wheels exist only for them; on
# newer Pythons the local stack uses the PostgreSQL and Redis binaries found on the machine.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3.14 python3; do \
	$$p -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 14)' 2>/dev/null \
	&& { command -v $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck imports check clean stack-down roster-fixtures fuzz chaos

# The C extension (actors/roster/_odsscan.c) is built in place by the editable install.
$(STAMP): pyproject.toml setup.py actors/roster/_odsscan.c
	@test -n "$(PYTHON)" || { echo "Python 3.11 to 3.14 is needed; set PYTHON=/path/to/python3" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: the main job on embedded defaults (or the configured services)
run: $(STAMP)
	$(BIN)/jobplatform demo

## test: the test suite against real PostgreSQL, Redis, S3 (moto's server) and ffmpeg
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## fuzz: the property tests and the roster files' byte fuzzing with many more, random inputs
## (FUZZ_EXAMPLES each, default 3000: 5 min 16 s here). `make test` runs 60 each, fixed (8 s).
FUZZ_EXAMPLES ?= 3000
FUZZ_TESTS := tests/schemas/test_properties.py tests/actors/roster/test_normalise_properties.py \
	tests/jobplatform/test_kinds_properties.py tests/actors/roster/test_fuzz_files.py
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest $(FUZZ_TESTS) $(PYTEST_ARGS)

## chaos: the long fault run (root: private servers, a tmpfs log disk): 40 writer kills and
## every other fault 3 times over 10 min of load; CHAOS_SEED to replay one (printed each run).
## `make test` runs a short one (tests/bench/test_chaos.py, about a minute).
CHAOS_ARGS ?= --kills 40 --repeat 3 --duration 600 --videos 1500 --imports 30
chaos: $(STAMP)
	$(BIN)/jobplatform bench chaos $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)) $(CHAOS_ARGS)

## lint: ruff, mypy (strict) and the architecture contracts
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

## roster-fixtures: remake the roster test files made by LibreOffice (needs libreoffice-calc and
## python3-uno, e.g. Debian's; CI reads the committed files)
UNO_PYTHON ?= /usr/bin/python3
roster-fixtures:
	$(UNO_PYTHON) tests/actors/roster/fixtures/make_fixtures.py tests/actors/roster/fixtures

stack-down: $(STAMP)
	$(BIN)/jobplatform stack down

clean: stack-down
	rm -rf $(VENV) .jobplatform .mypy_cache .ruff_cache .pytest_cache
