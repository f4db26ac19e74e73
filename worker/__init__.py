"""The worker: one GPU-pinned actor running shell and LLM tasks.

``service``    the loop: broker socket, pidfds, inbox, timers; heartbeats
``attempts``   admission (slots, VRAM, limits), start, cancel, results
``shell``      attempts as subprocesses in their own session; env, log, signals
``llm``        the llama-cpp-python runtime: load/unload off the loop, counting
``api``        the OpenAI-compatible endpoint the worker's tasks call
``meter``      tokens per attempt, recent tok/s
``link``       held results, broker and brain comings and goings
``telemetry``  NVML and /proc readings; ``limits`` the constrained state
``config``     the worker's settings and the models it may load
"""
