"""The brain: the single authority for queue truth (pure core, journal, service)."""
