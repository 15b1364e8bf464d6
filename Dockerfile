# The AgentRL service image: `agentrl serve sandbox|reward|search` (CPU services, no vLLM).
#
#   docker build -t agentrl:dev .                                   # on a normal machine
#   docker build --network host --build-arg BASE_IMAGE=agentrl-base:bookworm -t agentrl:dev .
#                                                                   # offline: see docs/deploy.md
#
# BASE_IMAGE is any Debian bookworm image with Python >= 3.11 as `python3`: the official
# python:3.11-slim (interpreter in /usr/local), or a debootstrap root file system imported with
# `docker import` (Debian's python3 3.11 in /usr), which is how this builds without a registry.
# Both stages use the same base, so the virtual environment's interpreter link stays valid.
#
# torch's CPU build is in it (the search service's dense retrieval runs sentence-transformers;
# without it pip would pull PyPI's CUDA torch, several GB): TORCH_SPEC from TORCH_INDEX_URL, or a
# matching wheel placed in docker-wheels/ of the build context (as Dockerfile.loop). vLLM and
# the loop's services (rollout, trainer) are in Dockerfile.vllm and Dockerfile.loop.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a virtual environment with the project (editable) and its generated gRPC code ----
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Debian's python3 has no ensurepip (python3-venv); the official python images have it.
RUN python3 -c 'import ensurepip' 2>/dev/null || { \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv \
      && rm -rf /var/lib/apt/lists/*; }
RUN python3 -m venv /opt/agentrl/venv
ENV PATH=/opt/agentrl/venv/bin:$PATH
# Behind a TLS-inspecting proxy, pass its CA certificate (PEM text) to reach the package index:
# --build-arg EXTRA_CA_CERT="$(cat proxy-ca.crt)". It is added to pip's bundle in this stage
# only; the runtime stage never sees it.
ARG EXTRA_CA_CERT=""
RUN python -c 'from pip._vendor import certifi; print(open(certifi.where()).read())' \
      > /opt/agentrl/pip-ca.pem \
    && printf '%s\n' "$EXTRA_CA_CERT" >> /opt/agentrl/pip-ca.pem
ENV PIP_CERT=/opt/agentrl/pip-ca.pem
WORKDIR /opt/agentrl/src

# Dependencies first, from pyproject.toml alone: editing code does not reinstall them. torch
# first (a wheel in docker-wheels/ wins over the index), then everything else constrained to it.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY docker-wheels/ /tmp/wheels/
RUN pip install -q --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "$TORCH_SPEC" \
    && pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
    && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
    && pip install -q -r /tmp/requirements.txt "grpcio-tools>=1.66" -c /tmp/torch-constraint.txt \
    && rm -rf /tmp/wheels /tmp/*.txt

COPY setup.py ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services
COPY recipes ./recipes
# Editable, as scripts/setup.sh installs it: protogen writes the generated gRPC code into
# libs/proto of this source tree, which the installed package then serves from.
# grpcio-tools is needed only to generate.
RUN pip install -q --no-deps -e . \
    && python -m agentrl.common.protogen \
    && pip uninstall -q -y grpcio-tools \
    && python -c 'import agentrl.proto.sandbox.v1.sandbox_pb2_grpc, agentrl.common.cli' \
    && rm /opt/agentrl/pip-ca.pem

# --- runtime ----------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
# HOME=/tmp: the root file system is read-only where the manifests and Compose run it, and
# /tmp is the writable tmpfs (library caches), as in the loop and vLLM images.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/agentrl/venv/bin:$PATH \
    HOME=/tmp \
    AGENTRL_RECIPE=/opt/agentrl/src/recipes/local.yaml
# bubblewrap: the sandbox's bwrap backend. tini: PID 1 that forwards SIGTERM (graceful drain)
# and reaps orphans of sandboxed programs. setpriv and mount come with util-linux/mount.
# The bwrap sandbox runs this image's /usr (read-only), so its runtime is installed here as the
# docker backend's image has it (services/sandbox/image/Dockerfile, docs/sandbox.md): Debian's
# python3 at /usr/bin/python3 (sandbox.python) with numpy, scipy, sympy and pandas, and g++ for
# `cpp` (its cc also builds the sandbox's launcher); SANDBOX_PACKAGES adds Debian packages.
ARG SANDBOX_PACKAGES=""
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends bubblewrap tini \
       g++ python3 python3-numpy python3-scipy python3-sympy python3-pandas ${SANDBOX_PACKAGES} \
    && rm -rf /var/lib/apt/lists/* /usr/include/boost \
    && find /usr/lib/python3/dist-packages -depth -type d -name tests -exec rm -rf {} + \
    && /usr/bin/python3 -c 'import numpy, scipy.linalg, scipy.optimize, sympy, pandas' \
    && command -v cc >/dev/null && command -v setpriv >/dev/null && command -v mount >/dev/null
# One unprivileged user for every service; uid/gid 10001 are what the Kubernetes manifests
# name in runAsUser/fsGroup. /var/lib/agentrl is the shared volume (runs, weights, indexes).
RUN groupadd --gid 10001 agentrl \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/agentrl --no-create-home \
       --shell /usr/sbin/nologin agentrl \
    && mkdir -p /var/lib/agentrl && chown 10001:10001 /var/lib/agentrl
# No setuid/setgid files: no process in the container can regain root through one (this matters
# most for the privileged sandbox variant, docs/deploy.md).
RUN find / -xdev -perm /6000 -type f -exec chmod a-s {} +
# Relative recipe paths (runs/, data/search-index) land on the shared volume.
WORKDIR /var/lib/agentrl
USER 10001:10001
# gRPC and HTTP (/healthz /readyz /metrics) of sandbox, reward, search (config.py defaults).
EXPOSE 50051 8081 50052 8082 50053 8083
ENTRYPOINT ["tini", "--", "agentrl"]
CMD ["--help"]
# Last: on a vfs storage driver every step after it would copy its GB again.
COPY --from=build /opt/agentrl /opt/agentrl
