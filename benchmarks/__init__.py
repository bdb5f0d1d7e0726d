"""The latency suite: compiled runtime against the plain PyTorch pipeline, in one run, and the server."""
