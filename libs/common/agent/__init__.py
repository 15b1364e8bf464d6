"""The agent loop as a library: one episode (loop.py), a task's group of episodes, plain or ARPO
tree (group.py, arpo.py), and the tools an episode calls (tools.py).

Shared by the rollout workers (services/rollout: the Redis-driven service) and the trainer's
evaluation and data generation (services/trainer/eval_job.py, calculator.py), so that the
episodes a run evaluates are made by exactly the code that makes its training episodes, and no
service imports another service's package (docs/architecture.md, "Seams").
"""
