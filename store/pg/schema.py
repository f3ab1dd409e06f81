"""The tables of a PostgreSQL store, created on first use in a schema of their own.

The schema's `meta` table holds its version: code of another version refuses it
rather than read tables laid out differently. Creation runs under a transaction
advisory lock, so processes that start together create it once.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from ..errors import StoreFormatError

VERSION = 1

_TABLES = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
-- num: creation order, also the cursor of a search. Values are msgpack bytes.
CREATE TABLE promises (
    num bigserial UNIQUE,
    id text PRIMARY KEY,
    state text NOT NULL,
    func text NOT NULL,
    args bytea NOT NULL,
    parent text,
    tags bytea NOT NULL,
    timeout double precision,
    created_at double precision NOT NULL,
    settled_at double precision,
    value bytea,
    attempt integer NOT NULL DEFAULT 0,
    due double precision  -- a timer's time, so the sweep finds due ones by index
);
CREATE INDEX promises_parent ON promises (parent, num) WHERE parent IS NOT NULL;
CREATE INDEX promises_deadline ON promises (timeout) WHERE state = 'pending' AND timeout IS NOT NULL;
CREATE INDEX promises_timer ON promises (due) WHERE state = 'pending' AND due IS NOT NULL;
CREATE INDEX promises_settled ON promises (settled_at) WHERE parent IS NULL AND state <> 'pending';
-- One row per pending runnable promise. counter fences claims; queued is the place in
-- the ready queue (front: given back after a death, ahead of the rest); deadline
-- copies the promise's timeout, so a claim skips overdue tasks without a join.
CREATE SEQUENCE queue_seq;
CREATE TABLE tasks (
    id text PRIMARY KEY,
    state text NOT NULL,
    counter bigint NOT NULL DEFAULT 0,
    attempt integer NOT NULL DEFAULT 1,
    owner text,
    expires_at double precision,
    not_before double precision NOT NULL DEFAULT 0,
    awaiting text[] NOT NULL DEFAULT '{}',
    remaining integer NOT NULL DEFAULT 0,
    wake text NOT NULL DEFAULT 'first',
    affinity text,
    last_error bytea,
    ready_since double precision NOT NULL,
    claimed_at double precision,
    front boolean NOT NULL DEFAULT false,
    deadline double precision,
    queued bigint NOT NULL DEFAULT nextval('queue_seq')
);
-- A claim walks the ready index from its head, past the entries of tasks claimed since:
-- vacuumed often, so a long-lived store's queue head stays short.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
                       autovacuum_analyze_scale_factor = 0.05);
CREATE INDEX tasks_ready ON tasks (front DESC, queued) WHERE state = 'ready';
CREATE INDEX tasks_delayed ON tasks (not_before) WHERE state = 'ready' AND not_before > 0;
CREATE INDEX tasks_owner ON tasks (owner) WHERE state = 'claimed';
CREATE INDEX tasks_lease ON tasks (expires_at) WHERE state = 'claimed';
CREATE INDEX tasks_affinity ON tasks (affinity) WHERE affinity IS NOT NULL;
CREATE INDEX tasks_awaiting ON tasks USING gin (awaiting) WHERE state = 'waiting';
CREATE INDEX tasks_parked ON tasks (id) WHERE state = 'parked';
-- backend: the server pid of the connection holding the supervisor lock (a live one holds it).
CREATE TABLE supervisors (id text PRIMARY KEY, info bytea NOT NULL, beat double precision NOT NULL,
                          backend integer NOT NULL);
"""


def lock_key(schema: str) -> sql.Composed:
    """An advisory lock key of this schema: hashtext of a name no other use shares."""
    return sql.SQL("hashtext({})").format(sql.Literal(f"fanout-runner:{schema}"))


def prepare(conn: Any, schema: str) -> None:
    """Create the schema at this version if it is new; refuse one of another version."""
    with conn.transaction():
        conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({})").format(lock_key(schema)))
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        has_meta = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
        if not has_meta:
            conn.execute(_TABLES)
            conn.execute("INSERT INTO meta VALUES ('version', %s)", (str(VERSION),))
            return
        row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    version = None if row is None else row[0]
    if version != str(VERSION):
        raise StoreFormatError(f"schema {schema!r} is a store of version {version}; "
                               f"this runner reads version {VERSION}")
