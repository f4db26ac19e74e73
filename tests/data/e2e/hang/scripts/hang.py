"""First run: ignore SIGTERM and hang. Later runs: succeed at once."""

import argparse
import signal
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--counter", required=True)
args = parser.parse_args()
try:
    with open(args.counter) as handle:
        runs = int(handle.read() or 0)
except FileNotFoundError:
    runs = 0
runs += 1
with open(args.counter, "w") as handle:
    handle.write(str(runs))
if runs == 1:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("hanging, deaf to SIGTERM", flush=True)
    while True:
        time.sleep(1)
print(f"run {runs}: ok")
