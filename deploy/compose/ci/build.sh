#!/usr/bin/env bash
# Build the CI image of the Compose loop (agentrl-ci:latest, deploy/compose/ci/Dockerfile),
# idempotently:
#
#   bash deploy/compose/ci/build.sh     # ~2 minutes from the base on an idle 2-core machine
#
# The base is services/sandbox/image/build.sh's debootstrap bookworm image (built by it when
# missing; BASE_IMAGE=python:3.11-slim on a machine with a registry). The image is current
# when its label carries the hash of the Dockerfile (less its comments) and the base's id;
# FORCE=1 rebuilds. It holds nothing of the checkout, so every clone on the machine shares it.
set -Eeuo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
IMAGE=agentrl-ci:latest
BASE_IMAGE=${BASE_IMAGE:-agentrl-sandbox-base:bookworm}
FORCE=${FORCE:-0}

step() { printf '==> %s\n' "$*"; }
fail() { printf 'BUILD FAILED: %s\n' "$*" >&2; exit 1; }

docker info >/dev/null 2>&1 ||
  fail "no Docker engine answers; start one: AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  [ "$BASE_IMAGE" = agentrl-sandbox-base:bookworm ] ||
    fail "base image $BASE_IMAGE is missing (docker pull it, or leave BASE_IMAGE unset)"
  step "base $BASE_IMAGE: building it (services/sandbox/image/build.sh)"
  bash "$REPO/services/sandbox/image/build.sh"
fi

# As services/sandbox/image/build.sh decides: comment lines are left out of the hash, so
# editing one does not rebuild (the check is repeated there; that script is the sandbox's).
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
want=$( (grep -v '^[[:space:]]*#' "$HERE/Dockerfile"; echo "$base_id") | sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "agentrl.ci.build" }}' "$IMAGE" \
  2>/dev/null || true)
if [ "$have" = "$want" ] && [ "$FORCE" != 1 ]; then
  step "$IMAGE: up to date ($want)"
  exit 0
fi
step "docker build $IMAGE from $BASE_IMAGE"
DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --label "agentrl.ci.build=$want" -t "$IMAGE" "$HERE" >/dev/null
