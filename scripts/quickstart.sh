#!/usr/bin/env bash
# The main job on the embedded default (recipes/local.yaml). Today it brings up the services
# that exist as a supervised local stack, shows their status, makes one real call to each and
# takes the stack down again. Training a tiny model to use a tool end to end (SFT + RL +
# report) will extend this script when the rollout and trainer services land.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTRL=.venv/bin/agentrl
RECIPE=recipes/local.yaml

echo "==> recipe: $RECIPE"
$AGENTRL config validate "$RECIPE" --quiet
echo "==> Redis streams"
$AGENTRL streams check --recipe "$RECIPE"
echo "==> QA world and its search index (data/; about a second, skipped when present)"
if [ ! -d data/search-index ]; then
  $AGENTRL data make-qa-world --seed 0 --out data/qa-world --num-passages 2000 --num-questions 200
  $AGENTRL search index data/qa-world/corpus.jsonl --out data/search-index
fi
echo "==> local stack (agentrl up)"
trap '$AGENTRL down --recipe "$RECIPE" >/dev/null 2>&1 || true' EXIT
$AGENTRL up --recipe "$RECIPE" --services sandbox,reward,search
echo "==> one call to each service"
.venv/bin/python scripts/stack_tour.py --recipe "$RECIPE"
echo "==> agentrl down"
$AGENTRL down --recipe "$RECIPE"
trap - EXIT
