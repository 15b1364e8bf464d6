#!/usr/bin/env bash
# Build the docker backend's sandbox image (agentrl.sandbox.docker), idempotently.
#
#   bash services/sandbox/image/build.sh                      # here: no registry reachable
#   BASE_IMAGE=python:3.11-slim bash services/sandbox/image/build.sh   # a normal machine
#
# Without BASE_IMAGE, a base image is made locally: debootstrap a minbase Debian bookworm with
# python3 from Debian's mirror (~50 s), then `docker import` it as agentrl-sandbox-base:bookworm.
# Then `docker build --network host --build-arg BASE_IMAGE=...` the Dockerfile beside this file.
# Every step whose output exists is skipped: the base image if present, the sandbox image if it
# carries the hash of the Dockerfile and base it was built from (so editing the Dockerfile
# rebuilds it). FORCE=1 rebuilds both.
#
# Environment: IMAGE (default agentrl-sandbox:latest, SandboxConfig.docker_image), BASE_IMAGE,
# DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE, EXTRA_PACKAGES (Debian packages
# added to the runtime beside g++ and python3-numpy/scipy/sympy/pandas; defaults to
# AGENTRL_SANDBOX_PACKAGES, the list scripts/setup.sh installs for the bwrap backend).
set -Eeuo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
IMAGE=${IMAGE:-agentrl-sandbox:latest}
LOCAL_BASE=agentrl-sandbox-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FORCE=${FORCE:-0}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-${AGENTRL_SANDBOX_PACKAGES:-}}

step() { printf '==> %s\n' "$*"; }
fail() { printf 'BUILD FAILED: %s\n' "$*" >&2; exit 1; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }

docker info >/dev/null 2>&1 ||
  fail "no Docker engine answers; start one: AGENTRL_WITH_DOCKER=1 bash scripts/setup.sh"

if [ "$BASE_IMAGE" = "$LOCAL_BASE" ]; then
  if has_image "$LOCAL_BASE" && [ "$FORCE" != 1 ]; then
    step "base $LOCAL_BASE: present"
  else
    command -v debootstrap >/dev/null ||
      fail "debootstrap is missing: apt-get install -y debootstrap (or set BASE_IMAGE=python:3.11-slim)"
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root (or set BASE_IMAGE to an existing image)"
    rootfs=$(mktemp -d /var/tmp/agentrl-sandbox-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    chmod 0755 "$rootfs"  # mktemp makes it 0700, and it becomes the image's "/"
    step "debootstrap bookworm minbase + python3 into $rootfs (~50 s)"
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$MIRROR" >/dev/null ||
      fail "debootstrap failed (is $MIRROR reachable?)"
    step "docker import -> $LOCAL_BASE"
    tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  fi
fi

# The image is current when it was built from this Dockerfile on this base (by image id).
# Comment lines are left out of the hash: editing one does not rebuild (minutes on vfs).
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE")
want=$( (grep -v '^[[:space:]]*#' "$HERE/Dockerfile"; echo "$base_id"; echo "$EXTRA_PACKAGES") |
  sha256sum | cut -c1-16)
have=$(docker image inspect -f '{{ index .Config.Labels "agentrl.sandbox.build" }}' "$IMAGE" \
  2>/dev/null || true)
if [ "$have" = "$want" ] && [ "$FORCE" != 1 ]; then
  step "image $IMAGE: up to date ($want)"
  exit 0
fi
step "docker build $IMAGE from $BASE_IMAGE"
docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "EXTRA_PACKAGES=$EXTRA_PACKAGES" \
  --label "agentrl.sandbox.build=$want" -t "$IMAGE" "$HERE" >/dev/null
docker run --rm --network none "$IMAGE" python3 -c 'import numpy; print("sandbox image ok")'
