# shellcheck shell=bash
# The steps both quickstarts (quickstart.sh, quickstart_search.sh) share. Sourced from the
# repository root after RECIPE is set: `start_run` first, then the script's own data steps,
# then `cold_start_rl_report`.
AGENTRL=.venv/bin/agentrl
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started )) s"; }

# start_run: RUN_DIR, MODEL_DIR, DATA_DIR, INDEX_DIR from the recipe (so a reduced recipe writes
# elsewhere), the EXIT trap that takes the stack down on failure, validation, and a fresh run
# directory unless QUICKSTART_RESUME is set.
start_run() {
  read -r RUN_DIR MODEL_DIR DATA_DIR INDEX_DIR < <(.venv/bin/python -c '
import sys; from pathlib import Path; from agentrl.common.config import load_config
config = load_config(sys.argv[1])
print(config.run.output_dir, config.model.path, Path(config.data.train_path).parent,
      config.search.index_dir)' "$RECIPE")
  trap '$AGENTRL down --recipe "$RECIPE" >/dev/null 2>&1 || true' EXIT

  echo "==> [$(elapsed)] recipe $RECIPE (run directory $RUN_DIR)"
  $AGENTRL config validate "$RECIPE" --quiet
  if [ -e "$RUN_DIR/checkpoints" ] && [ -z "${QUICKSTART_RESUME:-}" ]; then
    echo "    $RUN_DIR holds an earlier run: starting afresh (QUICKSTART_RESUME=1 continues it)"
    rm -rf "$RUN_DIR"
  fi
}

# cold_start_rl_report SERVICES: the stack's services (vllm first), e.g. vllm,sandbox,reward,rollout
cold_start_rl_report() {
  local services=$1
  if [ ! -f "$MODEL_DIR/config.json" ]; then
    echo "==> [$(elapsed)] tiny model: tokenizer trained on the task's text, random weights"
    $AGENTRL model init --preset tiny --out "$RUN_DIR/init" --data "$DATA_DIR/sft.jsonl" >/dev/null
    echo "==> [$(elapsed)] SFT cold start on executed trajectories"
    $AGENTRL sft --recipe "$RECIPE" --model "$RUN_DIR/init" --log-every 50
  fi

  echo "==> [$(elapsed)] local stack: $services (vLLM serves the SFT model)"
  $AGENTRL up --recipe "$RECIPE" --services "$services"

  echo "==> [$(elapsed)] RL through the stack (evaluation before and after)"
  $AGENTRL train --recipe "$RECIPE"

  echo "==> [$(elapsed)] agentrl down"
  $AGENTRL down --recipe "$RECIPE" >/dev/null
  trap - EXIT

  echo "==> [$(elapsed)] report"
  $AGENTRL report "$RUN_DIR" | tail -2
  .venv/bin/python scripts/quickstart_summary.py "$RUN_DIR"
  echo "==> done in $(elapsed)"
}
