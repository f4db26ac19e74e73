"""A data check that always fails, with exit code 3."""

import sys


def optional_report() -> None:  # never called: its imports are only listed
    import llmo_no_such_module  # noqa: F401
    import zmq  # noqa: F401


print("the data is not good", file=sys.stderr)
sys.exit(3)
