"""Check that one candidate is a whole number; record it for validation."""

import argparse
import json
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--value", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not args.value.isdigit():
        print(f"candidate {args.id} is not a whole number: {args.value!r}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.id}.json"), "w", encoding="utf-8") as handle:
        json.dump({"id": args.id, "value": int(args.value)}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
