"""Chat messages to a prompt: the model's own template, or a documented plain fallback.

The template is the GGUF's ``tokenizer.chat_template`` rendered with
llama-cpp-python's ``Jinja2ChatFormatter`` (the generation prompt added). A
model without one gets a plain transcript, one ``role: content`` line per
message, ending in ``assistant:``; generation stops where a next ``user:``
turn would begin.
"""

from __future__ import annotations

from typing import Any

PLAIN_STOP = ("\nuser:",)


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    text: str = llm.detokenize([token], special=True).decode("utf-8", errors="ignore")
    return text


def chat_prompt(llm: Any, messages: list[Any]) -> tuple[list[int], tuple[str, ...]]:
    """(prompt tokens, stop strings) for ``messages`` on ``llm`` (a ``llama_cpp.Llama``)."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a 'role'")
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        lines = [f"{m['role']}: {_content(m)}" for m in messages]
        text = "\n".join([*lines, "assistant:"])
        return llm.tokenize(text.encode(), add_bos=True, special=False), PLAIN_STOP
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, llm.token_eos()),
        bos_token=_token_text(llm, llm.token_bos()),
    )
    try:
        formatted = formatter(messages=messages)
    except Exception as exc:  # the template's own checks (roles, alternation)
        raise ValueError(f"the model's chat template refused the messages: {exc}") from None
    stop = formatted.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    add_bos = not getattr(formatted, "added_special", False)
    tokens = llm.tokenize(formatted.prompt.encode(), add_bos=add_bos, special=True)
    return tokens, stops


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""
