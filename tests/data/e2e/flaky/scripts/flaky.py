"""Count this run in a file; fail (exit 3) while the count is within --failures."""

import argparse
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--counter", required=True)
parser.add_argument("--failures", type=int, required=True)
args = parser.parse_args()
try:
    with open(args.counter) as handle:
        runs = int(handle.read() or 0)
except FileNotFoundError:
    runs = 0
runs += 1
with open(args.counter, "w") as handle:
    handle.write(str(runs))
if runs <= args.failures:
    print(f"run {runs}: failing on purpose")
    sys.exit(3)
print(f"run {runs}: ok")
