"""Gather every greeting into output/greetings.json; fail if one is missing."""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.manifest, encoding="utf-8") as handle:
        items = json.load(handle)["items"]
    greetings, missing = [], []
    for item in items:
        path = os.path.join(args.results, f"{item['id']}.json")
        if not os.path.exists(path):
            missing.append(item["id"])
            continue
        with open(path, encoding="utf-8") as handle:
            greetings.append(json.load(handle)["greeting"])
    if missing:
        print(f"no greeting for: {', '.join(missing)}", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"count": len(greetings), "greetings": greetings}, handle, indent=2)
    print(f"{len(greetings)} greetings in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
