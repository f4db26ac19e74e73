"""Sleep, then leave a file named after this process, so each run that finished shows."""

import argparse
import os
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--seconds", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
time.sleep(args.seconds)
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, f"{os.getpid()}.done"), "w") as handle:
    handle.write("done\n")
