"""Accept a checked candidate if it is prime (exit 0), else reject it (exit 65).

Exit code 65 (EX_DATAERR) tells llmo the candidate is rejected for good, so
the task is not retried; any other failure (a crash, a missing file) is.
"""

import argparse
import json
import os
import sys

REJECTED = 65  # the candidate is wrong: trying again would give the same answer


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    divisor = 2
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 1
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--id", required=True)
    parser.add_argument("--checked", required=True, help="the folder check_item wrote")
    parser.add_argument("--out", required=True, help="the folder of accepted candidates")
    args = parser.parse_args()
    with open(os.path.join(args.checked, f"{args.id}.json"), encoding="utf-8") as handle:
        value = json.load(handle)["value"]
    if not is_prime(value):
        print(f"rejected {args.id}: {value} is not prime")
        return REJECTED
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.id}.json"), "w", encoding="utf-8") as handle:
        json.dump({"id": args.id, "value": value}, handle)
    print(f"accepted {args.id}: {value} is prime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
