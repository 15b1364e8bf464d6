"""Search service: a local retrieval tool (BM25, dense, hybrid) behind gRPC and Search-R1-compatible HTTP."""
