"""Sleep, then append this step's name to the shared file."""

import argparse
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--name", required=True)
parser.add_argument("--seconds", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
time.sleep(args.seconds)
with open(args.out, "a") as handle:
    handle.write(args.name + "\n")
