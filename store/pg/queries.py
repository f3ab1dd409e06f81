"""The statements of the PostgreSQL store that do most in one round trip, with why each is safe."""

from __future__ import annotations

_CANDIDATES = ("SELECT id, front, queued FROM tasks WHERE state = 'ready' "
               "AND not_before <= %(now)s AND (deadline IS NULL OR deadline > %(now)s) AND {which} "
               "ORDER BY {order} LIMIT %(n)s FOR UPDATE SKIP LOCKED")
# One statement, so a transaction of its own (one round trip): the owner's own woken
# workflows first, then the queue's (given back after a death at its front), none overdue;
# each claimed with a fresh counter; their promises, when the next delayed task is due (for
# next_due) and whether any promise is overdue (one row of NULLs, saying so, when nothing
# was claimed).
CLAIM = f"""
WITH mine AS ({_CANDIDATES.format(which="affinity = %(owner)s", order="id")}),
others AS ({_CANDIDATES.format(which="(affinity IS NULL OR (affinity <> %(owner)s AND "
                                     "ready_since + %(grace)s <= %(now)s))",
                               order="front DESC, queued")}),
picked AS (SELECT * FROM (SELECT id, 0 AS k, id AS name, false AS front, 0::bigint AS queued FROM mine
                          UNION ALL SELECT id, 1, '', front, queued FROM others) AS c
           ORDER BY k, name, front DESC, queued LIMIT %(n)s),
claimed AS (UPDATE tasks t SET state = 'claimed', owner = %(owner)s, counter = t.counter + 1,
                expires_at = %(expires)s, claimed_at = %(now)s, front = false, affinity = NULL,
                awaiting = '{{}}', wake = 'first', not_before = 0
            FROM picked WHERE t.id = picked.id RETURNING t.id, t.counter, t.attempt),
got AS (SELECT p.id, p.state, p.func, p.args, p.parent, p.tags, p.timeout, p.created_at, p.settled_at,
               p.value, p.attempt, c.counter, c.attempt AS run, picked.k, picked.name, picked.front,
               picked.queued
        FROM claimed c JOIN picked ON picked.id = c.id JOIN promises p ON p.id = c.id)
SELECT got.id, got.state, got.func, got.args, got.parent, got.tags, got.timeout, got.created_at,
       got.settled_at, got.value, got.attempt, got.counter, got.run, %(expires)s::float8,
       (SELECT count(*) FROM (SELECT pg_notify(%(changes)s, '') FROM got LIMIT 1) AS n),
       (SELECT min(not_before) FROM tasks WHERE state = 'ready' AND not_before > %(now)s),
       EXISTS (SELECT 1 FROM promises WHERE state = 'pending' AND timeout <= %(now)s)
FROM (SELECT 1) AS one LEFT JOIN got ON true
ORDER BY got.k, got.name, got.front DESC, got.queued
"""
# Judge and write a suspend in one statement. The awaited promises are read FOR SHARE: a
# settle of one of them waits for this commit and then sees the task waiting, or this waits
# for the settle's commit and sees it settled; no wake-up falls between. The task waits
# only if its claim is current, every awaited id exists, and `wake` does not hold already.
SUSPEND = """
WITH aw AS (SELECT id, state FROM promises WHERE id = ANY(%(ids)s) ORDER BY id FOR SHARE),
me AS (SELECT state, counter FROM tasks WHERE id = %(id)s FOR UPDATE),
judged AS (SELECT count(*) AS found, count(*) FILTER (WHERE state = 'pending') AS remaining,
                  count(*) FILTER (WHERE state <> 'pending') AS settled,
                  bool_or(state NOT IN ('pending', 'resolved')) AS failed, bool_or(state = 'resolved') AS won,
                  array_agg(id) AS known
           FROM aw),
waiting AS (UPDATE tasks t SET state = 'waiting', awaiting = %(awaiting)s, remaining = j.remaining,
                wake = %(wake)s, affinity = %(affinity)s, owner = NULL, expires_at = NULL
            FROM judged j WHERE t.id = %(id)s AND t.state = 'claimed' AND t.counter = %(counter)s
                AND j.found = %(n)s AND NOT (j.settled > 0 AND (%(wake)s = 'first' OR j.remaining = 0
                    OR (%(wake)s = 'all' AND j.failed) OR (%(wake)s = 'any' AND j.won)))
            RETURNING t.id)
SELECT (SELECT state FROM me), (SELECT counter FROM me), j.known,
       (SELECT count(pg_notify(%(changes)s, '')) FROM waiting)
FROM judged j
"""
OVERDUE = ("SELECT id, timeout FROM promises WHERE state = 'pending' AND timeout <= %s "
            "ORDER BY timeout, id FOR UPDATE SKIP LOCKED")
HELD = ("SELECT t.id, t.state, t.counter, t.attempt, t.owner, t.expires_at, t.not_before, t.awaiting, "
         "t.affinity, t.last_error, t.claimed_at, t.wake, t.deadline FROM tasks t WHERE t.state = 'claimed' "
         "AND {} ORDER BY t.id FOR UPDATE")
