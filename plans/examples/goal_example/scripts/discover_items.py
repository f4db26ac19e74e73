"""Draw the next round of candidates: odd three-digit numbers, new each round.

Every run is one round. The round number is the count of round files already
in --state, so a goal-driven run that starts discovery again gets fresh
candidates with ids unique across rounds (r2_03 is round 2, candidate 3).
"""

import argparse
import json
import os
import random


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", required=True, help="folder that remembers past rounds")
    parser.add_argument("--out", required=True, help="where to write candidates.json")
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    os.makedirs(args.state, exist_ok=True)
    done = [n for n in os.listdir(args.state) if n.startswith("round_")]
    round_no = len(done) + 1
    rng = random.Random(round_no)
    items = [
        {"id": f"r{round_no}_{n:02d}", "value": rng.randrange(101, 1000, 2)}
        for n in range(1, args.count + 1)
    ]
    with open(os.path.join(args.state, f"round_{round_no:03d}.json"), "w") as handle:
        json.dump(items, handle)
    with open(args.out + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"round": round_no, "items": items}, handle, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"round {round_no}: {len(items)} candidates")


if __name__ == "__main__":
    main()
