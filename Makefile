# The two commands a newcomer runs (each sets everything up first; a second run skips what is done):
#   make quickstart   the main job on the embedded default (local stack, tiny model, CPU)
#   make test         the whole test suite, slow tests included
PY := .venv/bin/python

.PHONY: setup quickstart quickstart-search test test-fast proto lint bench

setup:
	bash scripts/setup.sh

quickstart: setup
	bash scripts/quickstart.sh

# The second job: the same with a search engine over a generated QA world (docs/search.md).
quickstart-search: setup
	bash scripts/quickstart_search.sh

test:
	bash scripts/test.sh

# Skip tests marked slow (while iterating; CI runs everything).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

proto:
	$(PY) -m agentrl.common.protogen

lint:
	$(PY) -m ruff check libs services tests benchmarks scripts
	$(PY) -m ruff format --check libs services tests benchmarks scripts
