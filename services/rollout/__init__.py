"""Rollout: the agent loop over a vLLM server pool, token-in/token-out, and its workers."""
