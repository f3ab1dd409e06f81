"""Inspection commands: promises, tree, status (being written)."""
