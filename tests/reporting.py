"""Lines the suite shows on the terminal whatever the capture mode, so that
CI's log keeps the counts of the fuzz and adversarial suites."""

from __future__ import annotations

import pytest


def say(config: pytest.Config, line: str) -> None:
    """Write ``line`` on its own line of the terminal report (shown without ``-s``)."""
    plugins = config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)
