"""`runner chaos`: the kill-and-restart harness on the command line (the harness is runner.chaos)."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..chaos import plan as chaos_plan
from ..chaos import run as chaos
from ..chaos.timeline import html_timeline, svg_timeline, text_timeline
from ..chaos.verdict import NOTIFY, Report, Scenario
from ..shared import MIN_LAPSE
from .durations import Duration
from .group import Env, cli, common, fail, parse_json

EXIT_VIOLATION = 1
EXIT_USAGE = 2


@cli.command("chaos")
@click.argument("func", required=False, default=NOTIFY.workflow)
@click.option("--arg", "args", multiple=True, metavar="JSON",
              help="One positional argument of FUNC (repeatable); judged then by the rules alone.")
@click.option("--kill-after", type=Duration(), default="2s", show_default=True,
              help="When to kill, after the workflow starts (500ms, 2s, 1.5s).")
@click.option("--target", type=click.Choice(chaos.TARGETS), default="workers", show_default=True,
              help="Kill the workers holding the run's claims, or the supervisor with all its workers; "
                   "or, on a store several supervisors share (PostgreSQL), start two and kill one.")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--random", "randomize", is_flag=True,
              help="Random kill instants (seeded), targets in turn, and kills inside store writes.")
@click.option("--seed", type=int, help="Seed of --random (printed); replays the same rounds.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option("--lapse", type=Duration(minimum=MIN_LAPSE), default=chaos.DEFAULT_LAPSE, show_default=True,
              help="The supervisors' heartbeat lapse (runner start --lapse), on a shared store.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.option("--timeline", "timeline_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the round's picture (SVG, or HTML if FILE ends in .html).")
@click.option("--keep", is_flag=True, help="Keep the temporary stores, effects journals and logs.")
@common
def chaos_cmd(env: Env, func: str, args: tuple[str, ...], kill_after: float, target: str, rounds: int,
              randomize: bool, seed: int | None, workers: int, lapse: float, as_json: bool,
              timeline_file: Path | None, keep: bool) -> None:
    """Kill a live run of FUNC, let it recover, and check what executed against what is allowed.

    Starts `runner start` on the store (a fresh temporary one unless --store is
    given), runs FUNC (default: the notify example, whose channel delays straddle
    the kill) with the --arg values, SIGKILLs at --kill-after, restarts, and prints
    one row per leaf promise of the run. The verdict comes from the store's history
    and from the effects the functions recorded with runner.effects.record. Exit 0
    when nothing settled before the kill ran again, everything in flight ran again
    and the run resolved; 1 when an invariant broke.

    \b
    Examples:
      runner chaos --kill-after 2s
      runner chaos --target supervisor --timeline run.svg
      runner chaos --rounds 200 --random --seed 7
      runner chaos --app shop checkout --arg '{"order": 7}' --kill-after 1s
    """
    if seed is not None and not randomize:
        fail("--seed only applies with --random", EXIT_USAGE)
    values = tuple(parse_json(text, f"--arg #{i}") for i, text in enumerate(args, 1))
    scenario = NOTIFY if func == NOTIFY.workflow and not values else Scenario(func, values)
    source = click.get_current_context().get_parameter_source("store_dir")
    given = source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    registry = env.load()
    shared = False
    if given:  # a store of the user's must be usable before any round; else each round makes its own
        store = env.open(load=False)[0]
        shared = store.shared
        store.close()
    if target == chaos_plan.PEER and not shared:
        fail(f"--target {chaos_plan.PEER} needs a store several supervisors share (--store postgresql://...)",
             EXIT_USAGE)
    registry.lookup(func)
    seed = secrets.randbelow(1 << 31) if randomize and seed is None else seed
    workdir = Path(tempfile.mkdtemp(prefix="runner-chaos-"))
    if randomize and not as_json:
        click.echo(f"runner chaos: {rounds} random rounds, seed {seed} (replay with --seed {seed})")
    many = rounds > 1
    started = time.monotonic()

    def progress(report: Report) -> None:
        if many and not as_json:
            click.echo(round_line(report))

    plan_list = chaos_plan.plans(rounds, kill_after=kill_after, target=target, randomize=randomize,
                                 seed=seed or 0, workers=workers, timed=scenario is NOTIFY, shared=shared)
    try:
        reports, summary = chaos.run_rounds(plan_list, workdir=workdir,
                                            store=env.store if given else None, registry=registry,
                                            scenario=scenario, apps=env.apps, lapse=lapse, on_report=progress)
    except chaos.ChaosError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        fail(f"the harness could not run: {exc}", 3)
    shown = next((r for r in reports if not r.ok), reports[-1])
    if timeline_file is not None:
        html = timeline_file.suffix.lower() in (".html", ".htm")
        page = html_timeline(shown) if html else svg_timeline(shown)
        timeline_file.write_text(page, encoding="utf-8")
    kept = keep or summary.violations > 0
    if as_json:
        document: dict[str, Any] = shown.to_json() if not many else {
            "seed": seed, "summary": summary.to_json(), "rounds": [r.to_json() for r in reports]}
        if randomize and not many:
            document["seed"] = seed
        document["kept"] = str(workdir) if kept else None
        click.echo(json.dumps(document, indent=2))
    else:
        if many:
            click.echo("")
            click.echo(f"summary: {summary.line()} in {time.monotonic() - started:.0f} s"
                       + (f"; seed {seed}" if randomize else ""))
            if not shown.ok:
                click.echo(f"\nround {shown.number}, the first that broke an invariant:")
        if not many or not shown.ok:
            for line in full_report(shown):
                click.echo(line)
        if timeline_file is not None:
            click.echo(f"timeline of round {shown.number} written to {timeline_file}")
        if kept:
            click.echo(f"stores, effects journals and supervisor logs kept in {workdir}")
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(0 if summary.violations == 0 else EXIT_VIOLATION)


def round_line(report: Report) -> str:
    kill = "no kill" if report.kill is None or not report.kill.pids else f"killed at {report.kill_at:.3f} s"
    verdict = "ok" if report.ok else "VIOLATION: " + report.violations[0]
    wall = "-" if report.wall is None else f"{report.wall:.2f} s"
    return f"round {report.number:>4}  {report.plan.describe():<30} {kill:<20} wall {wall:<8} {verdict}"


def full_report(report: Report) -> list[str]:
    lines = [f"runner chaos: {report.workflow} {report.root}, {report.plan.describe(long=True)}, "
             f"{report.plan.workers} workers",
             f"store {report.store}"]
    if report.kill is None:
        lines.append("kill: none")
    else:
        held = "" if report.kill.group else " (the workers holding the run's claims)"
        lines.append(f"kill at {report.kill_at:.3f} s: {report.kill.how}{held}")
    lines.append("")
    width = max([10, *(len(b.label) for b in report.branches)])
    lines.append(f"{'branch':<{width}} {'at the kill':<12} {'executions':>10} {'allowed':>8}  verdict")
    for b in report.branches:
        lines.append(f"{b.label:<{width}} {b.at_kill:<12} {b.executions:>10} {b.allowed_text:>8}  "
                     f"{b.verdict}")
    lines.append("")
    if report.result_problems:
        lines.append("result: WRONG: " + "; ".join(report.result_problems))
    else:
        lines.append(f"result: {report.result_line}")
    parts = [f"wall {_s(report.wall)}"]
    if report.slowest is not None:
        parts.append(f"slowest branch {report.slowest[0]} {report.slowest[1]:.2f} s")
    parts.append(f"downtime {_s(report.downtime)}")
    if report.restart_up is not None:
        parts.append(f"new supervisor up after {report.restart_up:.2f} s")
    if report.tail is not None:
        parts.append(f"workflow done {report.tail:.2f} s after its last branch")
    lines.append(" | ".join(parts))
    again = []
    for b in report.branches:
        if b.ran_again_after is not None:
            settled = "" if b.settled_after_kill is None else f", settled +{b.settled_after_kill:.2f} s"
            again.append(f"{b.name} +{b.ran_again_after:.3f} s (pid {b.ran_again_pid}{settled})")
    if again:
        lines.append("from the kill until each in-flight branch ran again: " + ", ".join(again))
    lines += [f"note: {n}" for n in report.notes]
    lines += [f"problem: {p}" for p in report.problems]
    lines.append("")
    lines += text_timeline(report)
    lines.append("")
    if report.ok:
        lines.append("PASS: nothing settled before the kill ran again, everything in flight ran again, "
                     "the result is right")
    else:
        lines.append(f"FAIL: {len(report.violations)} violation(s)")
        lines += [f"  - {v}" for v in report.violations]
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
