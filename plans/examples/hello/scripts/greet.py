"""Greet one item: write results/<id>.json."""

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True, help="the results folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    result = {
        "id": args.id,
        "greeting": f"Hello, {args.name}!",
        "task": os.environ.get("TASK_ID", ""),
        "at": time.time(),
    }
    path = os.path.join(args.out, f"{args.id}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    os.replace(path + ".tmp", path)
    print(result["greeting"])


if __name__ == "__main__":
    main()
