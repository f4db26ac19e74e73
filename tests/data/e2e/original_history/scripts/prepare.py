"""Write a manifest of three items."""

import json
import sys

with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump({"items": [{"id": "alpha"}, {"id": "beta"}, {"id": "gamma"}]}, handle)
