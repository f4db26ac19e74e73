"""OpenAI-shaped bodies for the engine's results: completions and chat, whole or streamed.

``usage.prompt_tokens_details.cached_tokens`` says how many prompt tokens were
reused from the cache rather than computed. A completion cut short because
the sequence's context had no more room says so in ``finish_reason``
(``length``) and in ``llmo.capped_by_context``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from llmo.worker.batching import Done


@dataclass(slots=True)
class Shape:
    name: str
    chat: bool
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.id = self.id or f"{prefix}-{secrets.token_hex(12)}"

    @property
    def _object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.name}

    @staticmethod
    def usage(done: Done) -> dict[str, Any]:
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
        }

    def result(self, done: Done) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": done.text,
                "logprobs": None,
                "finish_reason": done.finish_reason,
            }
        body = {**self._head(self._object), "choices": [choice], "usage": self.usage(done)}
        if done.capped:
            body["llmo"] = {"capped_by_context": True}
        return body

    def chunk(self, *, text: str = "", role: bool = False, done: Done | None = None) -> dict:
        """One streamed chunk: the role (chat's first), a text piece, or the last (``done``)."""
        reason = done.finish_reason if done is not None else None
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
            body = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
            body = {**self._head("text_completion"), "choices": [choice]}
        if done is not None:
            body["usage"] = self.usage(done)
            if done.capped:
                body["llmo"] = {"capped_by_context": True}
        return body
