"""Retries of the engine's background work, one policy written once (tenacity).

A batch, a push batch or a parking event that meets a backing service away (Redis, Kafka,
ClickHouse) waits and tries again: exponential back-off with jitter, so workers that lost
the same service do not come back in step, capped so that recovery is noticed quickly.
Each wait is logged at WARNING with what is retried and why, and counted when a counter
is named. Anything the predicate does not call transient is raised at once: the caller
decides (isolate the records, dead-letter the event).

    async for attempt in retrying("ledger rows of a batch", TRANSIENT, initial_s=0.1, max_s=5.0):
        with attempt:
            await send()
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_never
from tenacity.wait import wait_base, wait_exponential_jitter

from streams.metrics import counters

log = logging.getLogger(__name__)


class _AtLeastHint(wait_base):
    """Back-off, but never shorter than the failure's own `retry_after` (seconds) when it
    has one (ClickHouse saying how long it needs)."""

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.backoff(retry_state))
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hint = getattr(exc, "retry_after", None)
        return max(wait, float(hint)) if isinstance(hint, int | float) else wait


def _before_sleep(what: str, counter: str | None,
                  expected: tuple[type[BaseException], ...]) -> Callable[[RetryCallState], None]:
    def note(state: RetryCallState) -> None:
        if counter:
            counters[counter] += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (attempt %d), retrying in %.1fs: %r", what, state.attempt_number, wait, exc,
                    exc_info=exc if exc is not None and not isinstance(exc, expected) else None)
    return note


def retrying(what: str, transient: tuple[type[BaseException], ...], *, initial_s: float, max_s: float,
             counter: str | None = None, attempts: int | None = None,
             expected: tuple[type[BaseException], ...] | None = None) -> AsyncRetrying:
    """Retries `transient` failures of `what` (forever, or `attempts` times in all) with
    jittered exponential back-off from `initial_s` up to `max_s`; others raise at once,
    and so does the last failure when the attempts run out. A retried failure outside
    `expected` (default: `transient`) is logged with its traceback."""
    return AsyncRetrying(
        retry=retry_if_exception_type(transient),
        wait=_AtLeastHint(wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s)),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        before_sleep=_before_sleep(what, counter, transient if expected is None else expected),
        reraise=True,
    )
