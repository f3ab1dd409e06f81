"""Pictures of a chaos round: a self-contained SVG, and a compact text timeline.

One lane per branch (and one for the workflow), one bar per attempt labelled with
its worker's pid, a marker for every effect the journal recorded, and the kill instant as
a vertical line, so the recovery shows at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

from .verdict import Attempt, Lane, Report

COLORS = {
    "settled": "#2e7d32", "killed": "#c62828", "released": "#9e9e9e", "running": "#1565c0",
    "unobserved": "#6a1b9a", "after-settled": "#ef6c00", "step": "#455a64",
}
LEGEND = [
    ("settled", "attempt that settled it"), ("killed", "attempt killed by SIGKILL"),
    ("after-settled", "run after it settled (violation)"), ("step", "workflow step"),
]
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
Scale = Callable[[float], float]  # seconds from the start -> x in the picture


def _end(report: Report) -> float:
    times = [report.wall or 0.0, report.kill_at or 0.0]
    times += [a.end for lane in report.lanes for a in lane.attempts]
    times += [t for lane in report.lanes for a in lane.attempts for t in a.effects]
    return max(max(times), 0.05)


def _tick_step(span: float) -> float:
    """A round step giving about 5 to 10 ticks over `span` seconds."""
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


# -- text -------------------------------------------------------------------------


def text_timeline(report: Report, width: int = 64) -> list[str]:
    """Lanes of characters: letters are worker pids, X a kill, * an effect, ! an effect after settling."""
    span = _end(report)
    per = span / width
    pids = sorted({a.pid for lane in report.lanes for a in lane.attempts})
    letter = {pid: chr(ord("A") + i) if i < 26 else "?" for i, pid in enumerate(pids)}

    def col(t: float) -> int:
        return min(width - 1, max(0, int(t / per)))

    kill_col = None if report.kill_at is None else col(report.kill_at)
    lines = [f"timeline: 0 to {span:.2f} s, one column = {per * 1000:.0f} ms"
             + ("" if kill_col is None else f"; | = kill at {report.kill_at:.2f} s"),
             "  " + ", ".join(f"{letter[p]} = pid {p}" for p in pids)
             + "; X = killed, * = effect recorded, ! = effect after it settled"]
    for lane in report.lanes:
        row = [" "] * width
        if lane.created is not None:
            for c in range(col(lane.created), col(lane.settled if lane.settled is not None else span) + 1):
                row[c] = "."
        if kill_col is not None and row[kill_col] in " .":
            row[kill_col] = "|"
        for attempt in lane.attempts:
            mark = letter[attempt.pid]
            for c in range(col(attempt.start), col(attempt.end) + 1):
                row[c] = mark.lower() if attempt.outcome == "step" else mark
        for attempt in lane.attempts:  # marks after every bar, so a later bar never hides one
            if attempt.outcome == "killed":
                row[col(attempt.end)] = "X"
            for t in attempt.effects:
                row[col(t)] = "!" if attempt.outcome == "after-settled" else "*"
        lines.append(f"{lane.label[:14]:<14} {''.join(row).rstrip()}")
    return lines


# -- SVG --------------------------------------------------------------------------

LEFT, RIGHT, TOP, LANE, BAR, PLOT = 150, 230, 84, 46, 24, 900


def svg_timeline(report: Report) -> str:
    """The round as one self-contained SVG document (no scripts, no external resources)."""
    span = _end(report) * 1.04
    width = LEFT + PLOT + RIGHT
    height = TOP + LANE * len(report.lanes) + 118

    def x(t: float) -> float:
        return LEFT + PLOT * t / span

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    verdict = "PASS" if report.ok else "VIOLATION"
    out.append(_text(16, 26, f"runner chaos · round {report.number} · {report.workflow} {report.root} · "
                     f"{verdict}", size=17, weight="bold", fill="#2e7d32" if report.ok else "#c62828"))
    out.append(_text(16, 48, _subtitle(report), size=13, fill="#333"))
    bottom = TOP + LANE * len(report.lanes)
    step = _tick_step(span)
    for i in range(int(span / step) + 1):
        t = i * step
        out.append(f'<line x1="{x(t):.1f}" y1="{TOP}" x2="{x(t):.1f}" y2="{bottom + 4}" stroke="#e0e0e0"/>')
        out.append(_text(x(t), bottom + 17, f"{t:g} s", anchor="middle", size=11, fill="#666"))
    for index, lane in enumerate(report.lanes):
        out += _lane(report, lane, TOP + LANE * index, x)
    for index, lane in enumerate(report.lanes):  # kill marks last: on top of the re-run bars
        mid = TOP + LANE * index + LANE / 2
        out += [_cross(x(a.end), mid) for a in lane.attempts if a.outcome == "killed"]
    if report.kill_at is not None and report.kill is not None:
        kx = x(report.kill_at)
        out.append(f'<line x1="{kx:.1f}" y1="{TOP - 20}" x2="{kx:.1f}" y2="{bottom + 4}" stroke="#c62828" '
                   'stroke-width="2" stroke-dasharray="6 4"/>')
        label = f"SIGKILL at {report.kill_at:.2f} s: {_short_kill(report)}"
        right = kx + 7 * len(label) > LEFT + PLOT + RIGHT - 10  # near the right edge: write leftwards
        out.append(_text(kx + (-6 if right else 6), TOP - 8, label, size=12, weight="bold", fill="#c62828",
                         anchor="end" if right else "start"))
    if report.restart_up is not None and report.kill_at is not None:
        rx = x(report.kill_at + report.restart_up)
        out.append(f'<line x1="{rx:.1f}" y1="{TOP}" x2="{rx:.1f}" y2="{bottom + 22}" stroke="#1565c0" '
                   'stroke-width="1.5" stroke-dasharray="2 3"/>')
        out.append(_text(rx + 4, bottom + 33, f"new supervisor's workers up (+{report.restart_up:.2f} s)",
                         size=11, fill="#1565c0"))
    out += _legend(24, bottom + 66)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def html_timeline(report: Report) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>runner chaos {escape(report.root)}"
            f"</title></head>\n<body style='margin:16px'>\n{svg_timeline(report)}</body></html>\n")


def _subtitle(report: Report) -> str:
    parts = [f"target {report.plan.target}"]
    if report.wall is not None:
        parts.append(f"wall {report.wall:.2f} s")
    if report.slowest is not None:
        parts.append(f"slowest branch {report.slowest[0]} {report.slowest[1]:.2f} s")
    if report.downtime is not None:
        parts.append(f"downtime {report.downtime:.2f} s")
    if report.plan.delays:
        parts.append("delays: " + ", ".join(f"{ch} {d:g} s" for ch, d in report.plan.delays.items()))
    return " · ".join(parts)


def _short_kill(report: Report) -> str:
    assert report.kill is not None
    if report.kill.victim is not None:
        return f"store crash in pid {report.kill.victim} ({report.plan.crash_at}), then the group"
    if report.kill.group:
        return f"supervisor {report.kill.pids[0]} and workers {', '.join(map(str, report.kill.pids[1:]))}"
    pids = report.kill.pids
    return f"worker{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))}" if pids else "nobody"


def _lane(report: Report, lane: Lane, top: int, x: Scale) -> list[str]:
    mid = top + LANE / 2
    out = []
    if (top - TOP) // LANE % 2:
        out.append(f'<rect x="0" y="{top}" width="{LEFT + PLOT + RIGHT}" height="{LANE}" fill="#f5f5f5"/>')
    out.append(_text(16, mid + 4, lane.label, size=14, weight="bold"))
    if lane.created is not None:
        end = lane.settled if lane.settled is not None else _end(report)
        out.append(f'<line x1="{x(lane.created):.1f}" y1="{mid}" x2="{x(end):.1f}" y2="{mid}" '
                   'stroke="#bdbdbd" stroke-width="2"/>')
    label_end = -1.0  # where the last small label above the bars ends: the next one goes below
    for attempt in lane.attempts:
        bar, label_end = _bar(attempt, mid, x, label_end)
        out += bar
    if lane.settled is not None:
        out.append(f'<circle cx="{x(lane.settled):.1f}" cy="{mid}" r="4" fill="#2e7d32"/>')
    branch = next((b for b in report.branches if b.id == lane.id), None)
    right = LEFT + PLOT + 12
    if branch is None:
        state = "resolved" if lane.settled is not None else "pending"
        out.append(_text(right, mid + 4, f"workflow {state}", size=12, fill="#333"))
    else:
        color = "#2e7d32" if branch.ok else "#c62828"
        mark = "✓" if branch.ok else "✗"
        runs = f"{branch.executions} run{'s' if branch.executions != 1 else ''}"
        out.append(_text(right, mid - 3, f"{mark} {runs} (allowed {branch.allowed_text})", size=12,
                         weight="bold", fill=color))
        detail = f"{branch.at_kill} at the kill"
        if branch.ran_again_after is not None:
            detail += f", re-ran +{branch.ran_again_after:.2f} s"
        out.append(_text(right, mid + 13, detail, size=11, fill="#555"))
    return out


def _bar(attempt: Attempt, mid: float, x: Scale, label_end: float) -> tuple[list[str], float]:
    color = COLORS.get(attempt.outcome, "#1565c0")
    x0, x1 = x(attempt.start), x(attempt.end)
    w = max(x1 - x0, 3.0)
    h = BAR if attempt.outcome != "step" else BAR - 10
    y = mid - h / 2
    title = f"pid {attempt.pid}: {attempt.outcome}, {attempt.start:.3f} to {attempt.end:.3f} s"
    out = [f'<g><title>{escape(title)}</title><rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h}" '
           f'rx="4" fill="{color}" fill-opacity="0.9"/></g>']
    label = f"pid {attempt.pid}"
    if attempt.outcome == "step":
        pass  # steps are short: their pid is in the tooltip
    elif w > 7.5 * len(label) + 22:  # room for the label and a send marker at the end
        out.append(_text(x0 + 11, mid + 4.5, label, size=12, fill="#ffffff", weight="bold"))
    elif x0 > label_end:
        out.append(_text(x0, y - 3, label, size=10, fill=color))
        label_end = x0 + 6.2 * len(label)
    else:
        out.append(_text(x0, y + h + 11, label, size=10, fill=color))
    for t in attempt.effects:
        sx = x(t)
        out.append(f'<path d="M{sx:.1f},{mid - 7:.1f} l6,7 l-6,7 l-6,-7 z" fill="#ffffff" stroke="#212121" '
                   'stroke-width="1.5"/>')
    return out, label_end


def _cross(cx: float, cy: float) -> str:
    """The mark of a SIGKILL at the end of a killed attempt."""
    return (f'<g><circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="#ffffff" stroke="#c62828" stroke-width="2"/>'
            f'<path d="M{cx - 4:.1f},{cy - 4:.1f} l8,8 M{cx + 4:.1f},{cy - 4:.1f} l-8,8" stroke="#c62828" '
            'stroke-width="2.2"/></g>')


def _legend(left: float, top: float) -> list[str]:
    out = []
    cursor = left
    for outcome, text in LEGEND:
        out.append(f'<rect x="{cursor}" y="{top - 10}" width="22" height="12" rx="3" '
                   f'fill="{COLORS[outcome]}"/>')
        out.append(_text(cursor + 28, top, text, size=12, fill="#333"))
        cursor += 34 + 6.6 * len(text)
    out.append(f'<path d="M{cursor + 6},{top - 11} l6,7 l-6,7 l-6,-7 z" fill="#ffffff" stroke="#212121" '
               'stroke-width="1.5"/>')
    out.append(_text(cursor + 18, top, "effect in the journal", size=12, fill="#333"))
    out.append('<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#c62828" stroke-width="2" '
               'stroke-dasharray="6 4"/>'.format(left + 4, top + 12, top + 30))
    out.append(_text(left + 14, top + 26, "kill instant", size=12, fill="#333"))
    out.append(f'<line x1="{left + 104}" y1="{top + 21}" x2="{left + 150}" y2="{top + 21}" stroke="#bdbdbd" '
               'stroke-width="2"/>')
    out.append(_text(left + 158, top + 26, "promise pending (created to settled)", size=12, fill="#333"))
    return out


def _text(x: float, y: float, text: str, *, size: int = 13, weight: str = "normal", fill: str = "#111",
          anchor: str = "start") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" fill="{fill}" '
            f'text-anchor="{anchor}">{escape(text)}</text>')
