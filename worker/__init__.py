"""The worker: one GPU-pinned actor running shell and LLM tasks."""
