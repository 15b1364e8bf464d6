# The two commands a newcomer runs (each sets everything up first; a second run skips what is done):
#   make quickstart   the main job on the embedded default (local stack, tiny model, CPU)
#   make test         the whole test suite, slow tests included
PY := .venv/bin/python

.PHONY: setup quickstart test test-fast proto lint bench

setup:
	bash scripts/setup.sh

quickstart: setup
	bash scripts/quickstart.sh

test:
	bash scripts/test.sh

# Skip tests marked slow (while iterating; CI runs everything).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

proto:
	$(PY) -m agentrl.common.protogen

lint:
	$(PY) -m ruff check libs services tests benchmarks
