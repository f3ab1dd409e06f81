"""The retry policy is pure arithmetic: every case is checked without sleeping."""

from __future__ import annotations

import pytest

from runner.retry import Retry


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
