"""vLLM general plugin: registers AgentRL's gloo weight-transfer engine with vLLM's factories.

    [project.entry-points."vllm.general_plugins"]
    agentrl_gloo_weight_transfer = "agentrl.common.inference.vllm_plugin:register"

vLLM runs every `vllm.general_plugins` entry point in each of its processes (API server, engine
core, workers) before it builds an engine, so a stock `vllm serve ...
--weight-transfer-config '{"backend": "agentrl_gloo"}'` finds the backend. The trainer calls
`register()` itself before `WeightTransferTrainerFactory.trainer_init` (gloo_weight_transfer's
`GlooWeightSender` does).

Registration is lazy (a module path, not a class): importing this module costs nothing, and
gloo_weight_transfer.py is imported only by a process that creates the engine. `register()` is
idempotent. What this does NOT cover: `VLLM_PLUGINS`, if set, must list
`agentrl_gloo_weight_transfer` or vLLM skips this plugin.
"""

from __future__ import annotations

BACKEND_NAME = "agentrl_gloo"
"""The `backend` of `--weight-transfer-config` (prefixed: vLLM may add a plain `gloo` one)."""
ENGINE_MODULE = "agentrl.common.inference.gloo_weight_transfer"


def register() -> None:
    """Register the worker-side and trainer-side engines under `BACKEND_NAME` (once)."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    # register_engine raises ValueError on a second registration of a name (a process that
    # loads plugins twice, or a trainer that calls register() again): already done, then.
    for factory, class_name in (
        (WeightTransferEngineFactory, "GlooWeightTransferEngine"),
        (WeightTransferTrainerFactory, "GlooTrainerWeightTransferEngine"),
    ):
        try:
            factory.register_engine(BACKEND_NAME, ENGINE_MODULE, class_name)
        except ValueError:
            pass
