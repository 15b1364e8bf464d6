#!/usr/bin/env bash
# The README's test command (`make test`): set up, then run the whole suite, slow tests included.
# As root (CI) it also installs and starts a Docker engine and builds the sandbox image, so the
# `docker`-marked tests run; without root and without a running engine they cannot, and the
# summary says that they were left out.
set -euo pipefail
cd "$(dirname "$0")/.."

markers=()
if [ "$(id -u)" = 0 ] || docker info >/dev/null 2>&1; then
  AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh
  echo "==> sandbox image (services/sandbox/image/build.sh; several minutes the first time on vfs)"
  bash services/sandbox/image/build.sh
else
  bash scripts/setup.sh
  echo "!!  no Docker engine and not root: the docker-marked tests are left out of this run"
  markers=(-m "not docker")
fi
echo "==> tests"
exec .venv/bin/python -m pytest -q "${markers[@]}" "$@"
