"""Code shared by every AgentRL service: config, Redis streams, gRPC helpers, auth, metrics, logging, CLI."""
