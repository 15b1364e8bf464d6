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
RECIPE=${QUICKSTART_RECIPE:-recipes/quickstart.yaml}
# shellcheck source=scripts/quickstart_steps.sh
source scripts/quickstart_steps.sh
start_run

if [ ! -f "$DATA_DIR/sft.jsonl" ]; then
  echo "==> [$(elapsed)] calculator task; the SFT trajectories' tool calls run in the sandbox"
  $AGENTRL up --recipe "$RECIPE" --services sandbox >/dev/null
  # shellcheck disable=SC2086 # word splitting of the extra arguments is intended
  $AGENTRL data make-calculator --recipe "$RECIPE" --out "$DATA_DIR" ${QUICKSTART_DATA_ARGS:-}
  $AGENTRL down --recipe "$RECIPE" >/dev/null
fi

cold_start_rl_report vllm,sandbox,reward,rollout
