"""Gather the accepted candidates and compare their number with the target."""

import argparse
import json
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accepted", required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    accepted = []
    if os.path.isdir(args.accepted):
        for name in sorted(os.listdir(args.accepted)):
            if name.endswith(".json"):
                with open(os.path.join(args.accepted, name), encoding="utf-8") as handle:
                    accepted.append(json.load(handle))
    report = {
        "target": args.target,
        "accepted": len(accepted),
        "reached": len(accepted) >= args.target,
        "primes": [item["value"] for item in accepted],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"{len(accepted)} of {args.target} primes found: {report['primes']}")


if __name__ == "__main__":
    main()
