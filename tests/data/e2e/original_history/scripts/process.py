"""Write one output file for an item."""

import os
import sys

from helpers import line

item, folder = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, f"{item}.txt"), "w", encoding="utf-8") as handle:
    handle.write(line(item))
