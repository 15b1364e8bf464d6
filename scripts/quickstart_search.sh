#!/usr/bin/env bash
# The search quickstart: a tiny model learns to look facts up in a generated world it has never
# seen (one-hop questions, BM25 over the world's corpus), through the whole local stack. Each
# step is one `agentrl` command, as in scripts/quickstart.sh. QUICKSTART_RECIPE picks another
# recipe; QUICKSTART_WORLD_ARGS and QUICKSTART_DATA_ARGS size the world and the task (the
# integration test's reduced run).
#
#   1. the QA world, its BM25 index, the task; the SFT trajectories' searches run by the search
#      service
#   2. a tiny model (tokenizer trained on the task's text) and its SFT cold start
#   3. the local stack: vLLM serving the SFT model, search, reward, rollout
#   4. RL (GRPO): evaluation before, the training steps, evaluation after
#   5. the report: plots, Markdown and HTML in <run dir>/report/
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${QUICKSTART_RECIPE:-recipes/quickstart_search.yaml}
# shellcheck source=scripts/quickstart_steps.sh
source scripts/quickstart_steps.sh
start_run  # the QA world sits beside the task data
WORLD_DIR=$DATA_DIR/world
# Defaults: a 10,000-passage world (~2,000 train people, each with a catalogue number), 1,500 SFT
# episodes about 800 of them; questions name people by number (docs/search.md "Search quickstart").
WORLD_ARGS=${QUICKSTART_WORLD_ARGS:---num-passages 10000 --num-questions 200}
DATA_ARGS=${QUICKSTART_DATA_ARGS:-}
# Questions name people by catalogue number (search_task.py): an older world without them is remade.
if ! grep -qs '"numbered": true' "$WORLD_DIR/world.json"; then
  echo "==> [$(elapsed)] QA world and its BM25 index"
  # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
  $AGENTRL data make-qa-world --seed 0 --numbered --out "$WORLD_DIR" $WORLD_ARGS >/dev/null
  $AGENTRL search index "$WORLD_DIR/corpus.jsonl" --out "$INDEX_DIR" --overwrite 2>/dev/null
  rm -f "$DATA_DIR/sft.jsonl"  # the task of another world
fi
if [ ! -f "$DATA_DIR/sft.jsonl" ]; then
  echo "==> [$(elapsed)] search task; the SFT trajectories' searches run in the search service"
  $AGENTRL up --recipe "$RECIPE" --services search >/dev/null
  # shellcheck disable=SC2086
  $AGENTRL data make-search-task --recipe "$RECIPE" --world "$WORLD_DIR" --out "$DATA_DIR" \
    $DATA_ARGS
  $AGENTRL down --recipe "$RECIPE" >/dev/null
fi

cold_start_rl_report vllm,search,reward,rollout
