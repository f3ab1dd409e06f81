"""The PostgreSQL store: the same interface as the directory store, for several hosts.

It needs the `postgres` extra (psycopg 3). This package's top imports nothing of it:
`url` (is_url, redact) works without the driver; `store.PgStore` is imported by
open_store only for a postgresql:// URL.
"""
