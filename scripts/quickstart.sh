#!/usr/bin/env bash
# The main job on the embedded default. Today: check the local stack's recipe and that Redis and
# the generated schema are usable; the training quickstart (agentrl up + SFT + RL + report) will
# replace the body of this script when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTRL=.venv/bin/agentrl
echo "==> recipe"
$AGENTRL config validate recipes/local.yaml --quiet && echo "    recipes/local.yaml is valid"
echo "==> Redis streams"
.venv/bin/agentrl streams check --recipe recipes/local.yaml
