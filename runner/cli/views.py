"""Text views of the dicts in report.py and status.py, styled with rich.

The views only style text; a console decides whether styles become colour (a
terminal) or vanish (a pipe, or NO_COLOR). Lines never wrap, so piped output
stays one record per line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console, Group
from rich.text import Text

from ..error_values import error_text

STYLES = {"pending": "yellow", "resolved": "green", "rejected": "red", "rejected_canceled": "magenta",
          "rejected_timedout": "red", "parked": "bold yellow"}


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def clock(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def state(name: str, task: str | None = None) -> Text:
    return Text(name if task is None else f"{name} ({task})", style=STYLES.get(name, ""))


def compact(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


# -- promises -------------------------------------------------------------------------

def promise_list(listing: dict[str, Any]) -> Iterator[Text]:
    items = listing["items"]
    if not items:
        yield Text("no promises match")
        return
    id_w = max(len(p["id"]) for p in items)
    func_w = max(len(p["func"]) for p in items)
    for p in items:
        yield Text.assemble(f"{p['id']:<{id_w}}  ", state(p["state"]), " " * (17 - len(p["state"]) + 2),
                            f"{p['func']:<{func_w}}  {clock(p['created_at'])}  {seconds(p['duration'])}")


def promise_detail(d: dict[str, Any]) -> Iterator[Text]:
    task = d["task"]
    settled = f"{clock(d['settled_at'])} (after {seconds(d['duration'])})" if d["settled_at"] else "-"
    rows: list[tuple[str, str | Text]] = [
        ("id", d["id"]), ("state", state(d["state"], task and task["state"])), ("function", d["func"]),
        ("args", compact(d["args"])), ("parent", d["parent"] or "-"), ("created", clock(d["created_at"])),
        ("settled", settled if d["settled_at"] else f"- (running for {seconds(d['duration'])})"),
        ("children", str(d["children"])),
    ]
    if d["tags"]:
        rows.append(("tags", compact(d["tags"])))
    if d["timeout"] is not None:
        rows.append(("timeout", clock(d["timeout"])))
    if task is not None:
        rows.append(("attempt", f"{task['attempt']} (fencing counter {task['counter']})"))
        holder = f"{task['owner']} (pid {task['worker_pid']}, lease until {clock(task['expires_at'])})"
        rows.append(("worker", holder if task["owner"] else "-"))
        if task["awaiting"]:
            rows.append(("awaiting", ", ".join(task["awaiting"])))
        if task["last_error"] is not None and d["parked"] is None:  # else shown as why it is parked
            rows.append(("last error", error_text(task["last_error"])))
    if d["parked"] is not None:
        rows.append(("parked", f"{error_text(d['parked']['error'])}; once the code is fixed, "
                               f"'{d['parked']['resume']}' resumes it"))
    if d["state"] == "resolved":
        rows.append(("value", compact(d["value"])))
    elif d["error"] is not None:
        rows.append(("error", error_text(d["error"])))
    for label, value in rows:
        yield Text.assemble(f"{label:<11}", value)


# -- the call tree ----------------------------------------------------------------------

def node_line(n: dict[str, Any], label: str | None = None) -> Text:
    line = Text.assemble(Text(n["func"], style="bold"), f" {label or n['id']}  ",
                         state(n["state"], n["task"]), f"  {seconds(n['duration'])}")
    if n["attempt"] is not None:
        line.append(f"  attempt {n['attempt']}")
    if n["worker_pid"] is not None:
        line.append(f"  on pid {n['worker_pid']}")
    if n["error"] is not None:
        line.append(f"  {error_text(n['error'])}", style=STYLES.get(n["state"], ""))
    if n["parked"] is not None:
        line.append(f"  {error_text(n['parked']['error'])}", style=STYLES["parked"])
        line.append(f"  (resume: {n['parked']['resume']})")
    return line


def tree(root: dict[str, Any]) -> Iterator[Text]:
    """The call graph with box-drawing guides, drawn without recursion."""
    yield node_line(root)
    stack: list[tuple[dict[str, Any], str, bool]] = [
        (child, "", i == len(root["children"]) - 1) for i, child in enumerate(root["children"])][::-1]
    while stack:
        n, prefix, last = stack.pop()
        yield Text(prefix + ("└── " if last else "├── "), style="dim") + node_line(n)
        inner = prefix + ("    " if last else "│   ")
        kids = n["children"]
        stack.extend((child, inner, i == len(kids) - 1) for i, child in reversed(list(enumerate(kids))))


# -- status -------------------------------------------------------------------------------

def status(s: dict[str, Any]) -> Iterator[Text]:
    sup = s["supervisor"]
    if sup is None:
        yield Text(f"no supervisor is running on {s['store']}", style="bold")
    else:
        named = f" (id {sup['id']})" if sup.get("id") else ""
        yield Text.assemble(Text(f"supervisor {sup['pid']}{named}", style="bold"),
                            f" on {s['store']}, up {seconds(sup['uptime'])}, {sup['workers']} workers"
                            f" x {sup['concurrency']}, rss {size(sup['rss'])}, cpu {_percent(sup)}")
    others = [p for p in s["supervisors"] if sup is None or p["id"] != sup["id"]]
    for peer in others:  # on a store several supervisors share
        yield Text(f"  also supervising: {peer['pid']} on {peer['host']} (id {peer['id']}), "
                   f"{peer['workers']} workers")
    for w in s["workers"]:
        alive = "" if w["alive"] else "  (gone)"
        yield Text(f"  worker {w['pid']}  rss {size(w['rss'])}  cpu {_percent(w)}  "
                   f"running {len(w['running'])}{alive}")
        yield from _claims(w["running"], "    ")
    if s["unowned_claims"]:
        yield Text("  claims of no running worker (released when their lease ends):", style="yellow")
        yield from _claims(s["unowned_claims"], "    ")
    q = s["queue"]
    yield Text(f"queue: {q['ready']} ready, {q['claimed']} claimed, {q['waiting']} waiting, "
               f"{q['delayed']} delayed (retry backoff), {q['parked']} parked")
    if s["parked"]:
        yield Text("parked (replay took another path; resume once the code is fixed):",
                   style=STYLES["parked"])
    for p in s["parked"]:
        yield Text(f"  {p['id']}  {p['func']}  {error_text(p['error'])}  (resume: {p['resume']})")
    counts = [state(f"{n} {name}") for name, n in s["promises"].items()]
    for name, part in zip(s["promises"], counts, strict=True):
        part.stylize(STYLES.get(name, ""))
    yield Text("promises: ") + Text(", ").join(counts)


def _percent(p: dict[str, Any]) -> str:
    return "-" if p["cpu_percent"] is None else f"{p['cpu_percent']:.0f}%"


def _claims(claims: Iterable[dict[str, Any]], indent: str) -> Iterator[Text]:
    for c in claims:
        yield Text(f"{indent}{c['id']}  {c['func']}  attempt {c['attempt']}  for {seconds(c['running_for'])}"
                   f"  lease {seconds(c['expires_in'])} left")


# -- live progress -----------------------------------------------------------------------

def progress(data: dict[str, Any]) -> Group:
    """The root and each branch, one line each."""
    root = data["root"]
    lines = [node_line(root)]
    for b in data["branches"]:
        lines.append(Text("  ") + node_line(b, b["id"].removeprefix(root["id"])))
    if data["more"]:
        rest = ", ".join(f"{n} {name}" for name, n in sorted(data["more"].items()))
        lines.append(Text(f"  and {sum(data['more'].values())} more: {rest}", style="dim"))
    return Group(*lines)


def show(lines: Iterable[Text], out: Console | None = None) -> None:
    out = out or console()
    for line in lines:
        out.print(line)
