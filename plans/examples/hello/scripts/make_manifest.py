"""Write the manifest of names that the greet task expands over."""

import argparse
import json
import os

NAMES = [
    ("ada", "Ada Lovelace"),
    ("alan", "Alan Turing"),
    ("grace", "Grace Hopper"),
    ("edsger", "Edsger Dijkstra"),
    ("barbara", "Barbara Liskov"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="where to write manifest.json")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    manifest = {"items": [{"id": key, "name": name} for key, name in NAMES]}
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {len(NAMES)} items to {args.out}")


if __name__ == "__main__":
    main()
