"""The ``llmo`` command and its subcommands."""
