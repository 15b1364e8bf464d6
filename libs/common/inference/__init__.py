"""The vLLM inference pool, in one place for every process that talks to it.

- pool.py: `InferencePool`, the token-in/token-out client with sticky and least-loaded routing,
  health checks and ejection (the rollout's generation, the trainer's scoring);
- control.py: the admin routes of stock `vllm serve` (pause/resume, weight version, reload,
  prefix cache, the four-phase weight transfer), fanned out to every server with a timeout per
  phase and errors that name the server and the phase;
- launcher.py: `VLLMServer`, a `vllm serve` subprocess group (local stack, tests, benchmarks);
- gloo_weight_transfer.py, vllm_plugin.py: the CPU weight-transfer engine vLLM loads through
  its `vllm.general_plugins` entry point (the native transport on machines without NCCL).

The trainer's weight transports (services/trainer/transports) and the rollout worker both use
this package; neither imports the other.
"""
