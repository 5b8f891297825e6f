"""Overlap flags (issue 10, docs/linkage.md "Flags (sync)"): derived from linkage."""
