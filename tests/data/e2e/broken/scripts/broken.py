"""Always fail, saying why on stderr."""

import sys

print("the input is corrupt: cannot go on", file=sys.stderr)
sys.exit(4)
