# shellcheck shell=bash
# What both quickstarts (quickstart.sh, quickstart_search.sh) do once their task data is ready:
# a tiny model and its SFT cold start, the local stack, RL with evaluations, the report.
# Sourced; the caller sets AGENTRL, RECIPE, RUN_DIR, MODEL_DIR, DATA_DIR and `elapsed`, and
# installs the EXIT trap that takes the stack down on failure.

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
