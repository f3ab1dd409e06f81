"""The retry policy is pure arithmetic: every case is checked without sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import WorkerDied
from runner.registry import Registry
from runner.retry import Retry
from runner.store import Promise, State, Task, TaskState, open_store
from runner.store.deaths import died_error
from runner.supervisor import Supervisor


class Permanent(Exception):
    pass


class VeryPermanent(Permanent):
    pass


def test_defaults_back_off_exponentially_then_stop() -> None:
    policy = Retry()
    error = RuntimeError("x")
    assert policy.next_delay(1, error) == pytest.approx(0.1)
    assert policy.next_delay(2, error) == pytest.approx(0.2)
    assert policy.next_delay(3, error) is None


def test_delay_is_capped_at_max_delay() -> None:
    policy = Retry(attempts=10, delay=1.0, backoff=3.0, max_delay=5.0)
    delays = [policy.next_delay(n, RuntimeError()) for n in range(1, 10)]
    assert delays[:2] == [1.0, 3.0]
    assert delays[2:] == [5.0] * 7


def test_late_attempt_of_long_policy_does_not_overflow() -> None:
    policy = Retry(attempts=100_000, delay=0.5, backoff=2.0, max_delay=7.0)
    assert policy.next_delay(50_000, RuntimeError()) == 7.0
    assert Retry(attempts=100_000, delay=0.0).next_delay(50_000, RuntimeError()) == 0.0


def test_non_retryable_errors_and_their_subclasses_stop_at_once() -> None:
    policy = Retry(attempts=5, non_retryable=(Permanent,))
    assert policy.next_delay(1, Permanent()) is None
    assert policy.next_delay(1, VeryPermanent()) is None
    assert policy.next_delay(1, ValueError()) is not None


def test_none_allows_a_single_attempt() -> None:
    assert Retry.none().attempts == 1
    assert Retry.none().next_delay(1, RuntimeError()) is None


def test_non_retryable_is_stored_as_a_tuple_so_the_policy_hashes() -> None:
    policy = Retry(non_retryable=[Permanent])  # type: ignore[arg-type]
    assert policy.non_retryable == (Permanent,)
    assert hash(policy) == hash(Retry(non_retryable=(Permanent,)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"delay": -0.1},
        {"max_delay": -1.0},
        {"delay": float("inf")},
        {"backoff": 0.5},
        {"backoff": float("nan")},
    ],
)
def test_invalid_values_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 2.5}, {"attempts": True}, {"non_retryable": (ValueError, "KeyError")}],
)
def test_values_of_the_wrong_type_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        Retry().next_delay(0, RuntimeError())


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Retry().attempts = 5  # type: ignore[misc]


# -- after a death: what the supervisor tells the store ------------------------------------


def _after_death(store_dir: Path, policy: Retry, attempt: int, last_error: object,
                 func: str = "leaf") -> float | None:
    registry = Registry()
    registry.register(lambda: None, name="leaf", retry=policy)
    store = open_store(str(store_dir))
    try:
        supervisor = Supervisor(store, store_dir, registry)
        promise = Promise("p", State.PENDING, func, [], None, {}, None, 0.0)
        task = Task("p", TaskState.CLAIMED, attempt, attempt, "w1", 30.0, 0.0, (), None, last_error, 0.0)
        return supervisor.after_death(promise, task, died_error("w1", attempt, "killed by SIGKILL"))
    finally:
        store.close()


def test_the_first_rerun_after_a_death_is_immediate(store_dir: Path) -> None:
    assert _after_death(store_dir, Retry(attempts=5, delay=1.0), 1, None) == 0.0
    after_an_error = {"type": "ValueError", "message": "x"}
    assert _after_death(store_dir, Retry(attempts=5, delay=1.0), 2, after_an_error) == 0.0


def test_a_death_after_a_death_waits_the_policys_delay(store_dir: Path) -> None:
    died = died_error("w0", 1, None)
    assert _after_death(store_dir, Retry(attempts=5, delay=1.0, backoff=2.0), 2, died) == 2.0


def test_a_death_with_the_policy_spent_rejects(store_dir: Path) -> None:
    assert _after_death(store_dir, Retry(attempts=3), 3, died_error("w0", 2, None)) is None
    assert _after_death(store_dir, Retry(attempts=5, non_retryable=(WorkerDied,)), 1, None) is None


def test_a_death_of_an_unknown_function_reruns_at_once_for_the_worker_to_reject(store_dir: Path) -> None:
    assert _after_death(store_dir, Retry.none(), 1, None, func="gone") == 0.0
