"""The one retry policy (streams/retry.py): transient failures wait and try again, with
jittered back-off, counted and logged; anything else is raised at once."""

from __future__ import annotations

import logging
import time

import pytest

from streams.metrics import counters
from streams.retry import retrying


class Away(ConnectionError):
    pass


class Slow(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("slow")
        self.retry_after = retry_after


async def test_transient_failures_are_retried_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    before = counters["test_retries_total"]
    with caplog.at_level(logging.WARNING, logger="streams.retry"):
        async for attempt in retrying("a test step", (Away,), initial_s=0.001, max_s=0.01,
                                      counter="test_retries_total"):
            with attempt:
                calls += 1
                if calls < 4:
                    raise Away("redis away")
    assert calls == 4
    assert counters["test_retries_total"] - before == 3
    assert [r.getMessage().split(", retrying")[0] for r in caplog.records] == [
        f"a test step failed (attempt {n})" for n in (1, 2, 3)]
    assert all(r.exc_info is None for r in caplog.records), "an expected failure is logged without a traceback"


async def test_other_failures_raise_at_once() -> None:
    calls = 0
    with pytest.raises(KeyError):
        async for attempt in retrying("a test step", (Away,), initial_s=0.001, max_s=0.01):
            with attempt:
                calls += 1
                raise KeyError("a bug")
    assert calls == 1


async def test_the_last_failure_raises_when_attempts_run_out() -> None:
    calls = 0
    with pytest.raises(Away, match="still away"):
        async for attempt in retrying("a test step", (Away,), initial_s=0.001, max_s=0.01, attempts=3):
            with attempt:
                calls += 1
                raise Away("still away")
    assert calls == 3


async def test_a_failure_saying_how_long_to_wait_is_given_that_long(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="streams.retry"):
        async for attempt in retrying("a test insert", (Exception,), initial_s=0.001, max_s=0.01,
                                      expected=(Slow,)):
            with attempt:
                calls += 1
                if calls == 1:
                    raise Slow(0.2)
                if calls == 2:
                    raise ValueError("unexpected")
    assert time.monotonic() - t0 >= 0.2, "the failure's retry_after beats the back-off"
    assert "retrying in 0.2s" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is None and caplog.records[1].exc_info is not None, \
        "an unexpected failure is logged with its traceback"
