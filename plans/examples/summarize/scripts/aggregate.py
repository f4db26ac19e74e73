"""Gather the summaries into output/summaries.json and output/summaries.md."""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--out", required=True, help="the output folder")
    args = parser.parse_args()
    with open(args.manifest, encoding="utf-8") as handle:
        items = json.load(handle)["items"]
    results, missing = [], []
    for item in items:
        path = os.path.join(args.results, f"{item['id']}.json")
        if not os.path.exists(path):
            missing.append(item["id"])
            continue
        with open(path, encoding="utf-8") as handle:
            results.append(json.load(handle))
    if missing:
        print(f"no summary for: {', '.join(missing)}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    tokens = sum(r.get("completion_tokens") or 0 for r in results)
    with open(os.path.join(args.out, "summaries.json"), "w", encoding="utf-8") as handle:
        json.dump({"count": len(results), "tokens": tokens, "summaries": results}, handle, indent=2)
    lines = ["# Summaries", ""]
    for r in results:
        lines += [f"## {r.get('title') or r['id']}", "", r.get("summary") or "(empty)", ""]
    with open(os.path.join(args.out, "summaries.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    print(f"{len(results)} summaries, {tokens} tokens, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
