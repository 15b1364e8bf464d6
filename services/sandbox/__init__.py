"""Sandbox service: runs untrusted, model-written code with hard limits (bubblewrap or Docker).

Entry point `agentrl.sandbox.main.main`; gRPC `SandboxService` (agentrl.sandbox.servicer), the
SandboxFusion-compatible HTTP API (agentrl.sandbox.http_api) and a client (agentrl.sandbox.client).
See docs/sandbox.md for the isolation model and what it does NOT cover.
"""
