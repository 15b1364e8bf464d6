#!/usr/bin/env bash
# The main job (`make quickstart`): a tiny model learns to use a Python tool for arithmetic it
# cannot do in its head, through the whole local stack. Each step is one `agentrl` command, so
# a reader can rerun any of them alone. QUICKSTART_RECIPE picks another recipe and
# QUICKSTART_DATA_ARGS sizes the data (the integration test's reduced run).
#
#   1. the task's data, the SFT trajectories' tool calls executed by the sandbox service
#   2. a tiny model (tokenizer trained on the task's text) and its SFT cold start
#   3. the local stack: vLLM serving the SFT model, sandbox, reward, rollout worker
#   4. RL (GRPO): evaluation before, the training steps, evaluation after
#   5. the report: plots, Markdown and HTML in <run dir>/report/
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTRL=.venv/bin/agentrl
RECIPE=${QUICKSTART_RECIPE:-recipes/quickstart.yaml}
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }
# Paths from the recipe, so that a reduced recipe writes elsewhere.
read -r RUN_DIR MODEL_DIR DATA_DIR < <(.venv/bin/python -c '
import sys; from pathlib import Path; from agentrl.common.config import load_config
config = load_config(sys.argv[1])
print(config.run.output_dir, config.model.path, Path(config.data.train_path).parent)' "$RECIPE")
trap '$AGENTRL down --recipe "$RECIPE" >/dev/null 2>&1 || true' EXIT

echo "==> [$(elapsed)] recipe $RECIPE (run directory $RUN_DIR)"
$AGENTRL config validate "$RECIPE" --quiet
if [ -e "$RUN_DIR/checkpoints" ] && [ -z "${QUICKSTART_RESUME:-}" ]; then
  echo "    $RUN_DIR holds an earlier run: starting afresh (QUICKSTART_RESUME=1 continues it)"
  rm -rf "$RUN_DIR"
fi

if [ ! -f "$DATA_DIR/sft.jsonl" ]; then
  echo "==> [$(elapsed)] calculator task; the SFT trajectories' tool calls run in the sandbox"
  $AGENTRL up --recipe "$RECIPE" --services sandbox >/dev/null
  # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
  $AGENTRL data make-calculator --recipe "$RECIPE" --out "$DATA_DIR" ${QUICKSTART_DATA_ARGS:-}
  $AGENTRL down --recipe "$RECIPE" >/dev/null
fi

# shellcheck source=scripts/quickstart_steps.sh
source scripts/quickstart_steps.sh
cold_start_rl_report vllm,sandbox,reward,rollout
