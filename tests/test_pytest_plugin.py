"""The pytest plugin in a user's project of its own (pytester): crash tests that pass,
fail clearly, are interrupted or killed, and leave no process behind in any case.

Each project's conftest writes the (pid, start time) of every process its supervisor
ran, at set-up and at teardown; the checks here read them once pytest has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.local import gone
from tests.helpers import REPO_ROOT, wait_until

pytest_plugins = ["pytester"]

APP = '''
import time
from runner import function

@function
def charge(order):
    return "charged"

@function
def ship(order):
    time.sleep(order.get("ship_seconds", 0.8))
    return "shipped"

@function
async def checkout(ctx, order):
    return [await ctx.run(charge, order), await ctx.run(ship, order)]
'''

CONFTEST = '''
import json
import pytest

@pytest.fixture(autouse=True)
def record_processes(runner_supervisor, request):
    path = request.config.rootpath / f"procs-{request.node.name}.json"
    path.write_text(json.dumps(sorted(runner_supervisor.processes)))
    yield
    path.write_text(json.dumps(sorted(runner_supervisor.processes)))
'''

PASSING = '''
from app import charge, checkout, ship

def test_ship_runs_again_after_its_worker_dies(runner_supervisor, runner_client):
    run = runner_client.start(checkout, {"id": 1}, id="order-1")
    runner_supervisor.kill_when_running(ship, after=0.2)
    assert run.result(timeout=30) == ["charged", "shipped"]
    history = runner_client.history("order-1")
    assert history.count(charge) == 1
    assert history.outcomes(ship) == ["died", "resolved"]
'''

FAILING = '''
from app import checkout, ship

def test_wrongly_expects_ship_once(runner_supervisor, runner_client):
    run = runner_client.start(checkout, {"id": 2}, id="order-2")
    runner_supervisor.kill_when_running(ship, after=0.2)
    run.result(timeout=30)
    assert runner_client.history("order-2").count(ship) == 1

def test_kills_a_function_too_quick_to_catch(runner_supervisor, runner_client):
    run = runner_client.start(checkout, {"id": 3, "ship_seconds": 0}, id="order-3")
    run.result(timeout=30)
    runner_supervisor.kill_when_running(ship, timeout=0.5)
'''


def project(pytester: pytest.Pytester, **tests: str) -> None:
    pytester.makepyfile(app=APP, conftest=CONFTEST, **tests)
    pytester.makeini("[pytest]\nrunner_app = app\nrunner_workers = 2\n")


def recorded(root: Path) -> list[tuple[int, float]]:
    procs = [tuple(p) for path in root.glob("procs-*.json") for p in json.loads(path.read_text())]
    assert procs, "the project recorded no processes"
    return [(int(pid), float(started)) for pid, started in procs]


def assert_all_gone(root: Path) -> None:
    procs = recorded(root)
    wait_until(lambda: all(gone(p) for p in procs), timeout=10,
               message=lambda: f"left running: {[p for p in procs if not gone(p)]}")


def test_a_crash_test_passes_and_two_fail_with_clear_messages(pytester: pytest.Pytester) -> None:
    project(pytester, test_passing=PASSING, test_failing=FAILING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*assert 2 == 1*", "*where 2 = *count(ship)*"])
    result.stdout.fnmatch_lines(["*CrashTestError: ship was not running within 0.5 s (it had run 1 times "
                                 "before, each ended: resolved)*"])
    assert_all_gone(pytester.path)


def test_an_interrupted_test_leaves_nothing_running(pytester: pytest.Pytester) -> None:
    project(pytester, test_interrupted='''
from app import checkout

def test_interrupted(runner_supervisor, runner_client):
    runner_client.start(checkout, {"ship_seconds": 30}, id="order-4")
    raise KeyboardInterrupt
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert_all_gone(pytester.path)


def test_a_timed_out_test_leaves_nothing_running(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout")
    project(pytester, test_slow='''
import pytest
from app import checkout

@pytest.mark.timeout(2, method="signal")
def test_never_finishes(runner_supervisor, runner_client):
    runner_client.start(checkout, {"ship_seconds": 60}, id="order-5").result()
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout*"])
    assert_all_gone(pytester.path)


def test_a_killed_pytest_leaves_nothing_running(pytester: pytest.Pytester) -> None:
    project(pytester, test_hangs='''
from app import checkout

def test_hangs(runner_supervisor, runner_client, request):
    runner_client.start(checkout, {"ship_seconds": 60}, id="order-6")
    (request.config.rootpath / "running").write_text("")
    runner_client.get("order-6").result()
''')
    # The harshest end a CI gives a stuck suite: SIGKILL, no teardown of any kind.
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                            cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_until(lambda: (pytester.path / "running").exists(), timeout=30,
                   message="the test never started")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert_all_gone(pytester.path)


def test_the_readme_crash_test_is_the_one_our_suite_runs() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Testing your workflows", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == (REPO_ROOT / "tests" / "test_readme_crash.py").read_text()
