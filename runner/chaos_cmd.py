"""`runner chaos`: the kill-and-restart harness (being written)."""
