"""Reward service: verifiers (math, code, QA, format) and reward shaping behind gRPC."""
