"""Turn inputs/texts.json into the manifest the summarize task expands over."""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", required=True, help="a JSON file with a 'texts' array")
    parser.add_argument("--out", required=True, help="where to write manifest.json")
    args = parser.parse_args()
    with open(args.texts, encoding="utf-8") as handle:
        texts = json.load(handle)["texts"]
    items = []
    for n, entry in enumerate(texts, start=1):
        if not entry.get("text"):
            print(f"text {n} has no 'text'", file=sys.stderr)
            return 1
        items.append(
            {
                "id": str(entry.get("id") or n),
                "title": entry.get("title", ""),
                "text": " ".join(entry["text"].split()),
            }
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"items": items}, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {len(items)} items to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
