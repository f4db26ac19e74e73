"""``llmo tui``: a Textual monitor of the rig, a view of the brain's state.

``model`` is the pure state (no Textual, no sockets), ``feed`` owns the
sockets in a thread and hands the app coalesced ``Update``s, ``render``
formats cells, ``widgets`` / ``screens`` / ``batch_screen`` / ``app`` are
the Textual side; ``levels`` (a batch's graph by level), ``sorting`` (sort
keys by column) and ``search`` (a log's matches) are pure helpers.
"""
