"""Generated gRPC/protobuf code for every message and service in proto/ (`agentrl.proto.<area>.v1`).

Nothing but this file is committed here: scripts/setup.sh generates the rest with
`python -m agentrl.common.protogen`, and tests/unit/proto fails when it is stale.
"""
