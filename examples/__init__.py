"""Runnable examples of the runner, each checked end to end by `python -m examples`."""
