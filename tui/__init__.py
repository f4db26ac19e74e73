"""``llmo tui``: a Textual monitor of the rig, a view of the brain's state.

``model`` is the pure state (no Textual, no sockets), ``feed`` owns the
sockets in a thread and hands the app coalesced ``Update``s, ``render``
formats cells, ``widgets`` / ``screens`` / ``app`` are the Textual side.
"""
