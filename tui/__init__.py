"""The Textual monitor for the control machine."""
