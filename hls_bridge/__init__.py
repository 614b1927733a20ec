"""Placeholder package: built in a later issue (see README roadmap)."""
