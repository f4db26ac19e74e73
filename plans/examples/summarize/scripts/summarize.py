"""Summarise one manifest item with the worker's model; write results/<id>.json.

The worker gives its loaded model an OpenAI-compatible endpoint and puts the
base URL and model name in LLM_API_BASE and LLM_MODEL. The model may be a
small base model (Gemma 3 270M on a fresh rig), so the prompt is a
completion with one worked example, asking for a one-line, headline-style
summary.
Exit status 75 means "no model is reachable yet, try again later": the task
is requeued without spending an attempt.
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

TRY_LATER = 75

# One worked example: a small base model continues the pattern and writes a
# one-line summary in the style of a headline, then stops at the newline.
EXAMPLE = (
    "Article: The town opened a new swimming pool on Saturday. It has six lanes, "
    "a slide for children and a small cafe, and it is free for pupils on weekdays.\n"
    "Headline: New town pool opens, free for pupils on weekdays\n\n"
)


def completions_url(base: str) -> str:
    base = base.rstrip("/")
    return base + "/completions" if base.endswith("/v1") else base + "/v1/completions"


def complete(base: str, model: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop": ["\n", "Article:"],
    }
    if model:
        body["model"] = model
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("LLM_API_KEY")
    if key:  # the worker counts this attempt's tokens by its key
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(
        completions_url(base),
        data=json.dumps(body).encode(),
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--item", required=True, help="the id of the item to summarise")
    parser.add_argument("--out", required=True, help="the results folder")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args()

    with open(args.manifest, encoding="utf-8") as handle:
        items = {item["id"]: item for item in json.load(handle)["items"]}
    if args.item not in items:
        print(f"item {args.item} is not in {args.manifest}", file=sys.stderr)
        return 1
    item = items[args.item]

    base = os.environ.get("LLM_API_BASE", "")
    model = os.environ.get("LLM_MODEL", "")
    if not base:
        print("LLM_API_BASE is not set: no model is loaded for this task yet", file=sys.stderr)
        return TRY_LATER
    prompt = f"{EXAMPLE}Article: {item['text']}\nHeadline:"
    started = time.monotonic()
    try:
        reply = complete(base, model, prompt, args.max_tokens, args.timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        print(f"the endpoint answered {exc.code}: {detail}", file=sys.stderr)
        return TRY_LATER if exc.code in (429, 503) else 1
    except TimeoutError:
        print(f"no answer from {base} within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ConnectionError) as exc:
        print(f"cannot reach the model at {base}: {exc}", file=sys.stderr)
        return TRY_LATER
    seconds = time.monotonic() - started

    choice = (reply.get("choices") or [{}])[0]
    summary = " ".join(str(choice.get("text", "")).split())
    usage = reply.get("usage") or {}
    result = {
        "id": item["id"],
        "title": item.get("title", ""),
        "summary": summary,
        "model": reply.get("model") or model,
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "seconds": round(seconds, 3),
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{item['id']}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    print(f"{item['id']}: {summary or '(empty summary)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
