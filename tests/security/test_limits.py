"""The token buckets of coordinator/limits.py on a hand-driven clock: burst, refill, the
wait they answer, the bounded key table; and the 429 text names its settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from coordinator.config import Config, from_env
from coordinator.limits import KeyedBuckets, RestLimits, TokenBucket, retry_after_s


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(take: Callable[[], float], n: int) -> list[float]:
    return [take() for _ in range(n)]


def test_bucket_allows_its_burst_then_answers_the_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, burst=5, clock=clock)
    assert drain(bucket.take, 5) == [0.0] * 5
    wait = bucket.take()
    assert wait == pytest.approx(0.1)  # one token at 10 a second
    assert bucket.take() == pytest.approx(0.1)  # a refusal takes nothing


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, burst=5, clock=clock)
    drain(bucket.take, 5)
    clock.advance(0.25)  # 2.5 tokens
    assert drain(bucket.take, 2) == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.05)  # half a token short
    clock.advance(3600)  # refills to the burst, no further
    assert drain(bucket.take, 5) == [0.0] * 5
    assert bucket.take() > 0


def test_bucket_paced_at_its_rate_is_never_refused() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4, burst=1, clock=clock)
    for _ in range(100):
        assert bucket.take() == 0.0
        clock.advance(0.25)


def test_rate_zero_turns_the_limit_off() -> None:
    clock = FakeClock()
    assert drain(TokenBucket(0, 1, clock).take, 1000) == [0.0] * 1000
    keyed = KeyedBuckets(0, 1, 10, clock)
    assert [keyed.take("k") for _ in range(1000)] == [0.0] * 1000


def test_keys_have_buckets_of_their_own() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(rate_per_s=1, burst=3, keys_max=100, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0] * 3
    assert buckets.take("a") == pytest.approx(1.0)
    assert [buckets.take("b") for _ in range(3)] == [0.0] * 3  # a's use costs b nothing
    clock.advance(1.0)
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(1.0)


def test_key_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    clock = FakeClock()
    buckets = KeyedBuckets(rate_per_s=1, burst=2, keys_max=3, clock=clock)
    for _ in range(2):
        buckets.take("busy")
    assert buckets.take("busy") > 0
    for i in range(10_000):  # an attacker's made-up keys
        buckets.take(f"made-up-{i}")
        if i % 2:
            buckets.take("busy")  # still in use: stays in the table, still limited
    assert len(buckets) == 3
    assert "busy" in buckets and "made-up-0" not in buckets
    assert buckets.take("busy") > 0


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert retry_after_s(0.01) == 1
    assert retry_after_s(1.0) == 1
    assert retry_after_s(1.2) == 2


def test_limits_come_from_the_environment_and_the_refusal_names_them() -> None:
    config = from_env(Config(), {"TN_REST_REQUESTS_PER_S": "2", "TN_REST_REQUESTS_BURST": "7",
                                 "TN_WORKER_SESSIONS_PER_ACCOUNT_MAX": "3",
                                 "TN_LIVE_MESSAGES_PER_S": "1"})
    assert (config.rest_requests_per_s, config.rest_requests_burst) == (2, 7)
    assert config.worker_sessions_per_account_max == 3
    assert config.live_messages_per_s == 1
    text = RestLimits(config).refusal_text(1.5, "account")
    assert text.startswith("slow down; retry after 2 s; the limit is TN_REST_REQUESTS_PER_S=2")
    assert "TN_REST_REQUESTS_BURST=7" in text and text.endswith("per account")


def test_defaults_leave_room_for_the_test_suite_and_a_swarm() -> None:
    """The e2e helpers poll every 50 ms (20 a second) and a swarm's workers each fetch a
    task's code once, all at the same moment: the defaults must never refuse either."""
    c = Config()
    assert c.rest_requests_per_s >= 20 * 4
    assert c.rest_requests_burst >= c.worker_sessions_per_account_max
    assert c.worker_messages_per_s >= 10_000
