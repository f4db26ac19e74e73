"""Score the round's candidates (no even digit is better) into scored.json."""

import argparse
import json
import os


def score(value: int) -> int:
    return sum(1 for digit in str(value) if digit in "13579")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.candidates, encoding="utf-8") as handle:
        data = json.load(handle)
    items = [dict(item, score=score(item["value"])) for item in data["items"]]
    items.sort(key=lambda item: -item["score"])
    with open(args.out + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"round": data["round"], "items": items}, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"scored {len(items)} candidates")


if __name__ == "__main__":
    main()
