"""The seeded black-box fuzz over a real worker (tests/fuzz/fuzzer.py): a few thousand
mutated, mostly correctly signed requests across every endpoint that takes input; no
5xx, a 4xx with a message for every refusal, a dead letter for every refused callback,
no phone number in clear anywhere, and Redis = ledger = the independent model after.
`scripts/bench fuzz --requests 100000` runs the same at full size."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.fuzz.fuzzer import check_after, run_fuzz, start_fuzzed_worker

pytestmark = pytest.mark.integration

REQUESTS = int(os.environ.get("LOYALTY_FUZZ_REQUESTS", "3000"))
SEED = int(os.environ.get("LOYALTY_FUZZ_SEED", "20261129"))


def test_a_seeded_fuzz_gets_clear_refusals_and_changes_nothing_it_should_not(services: None, tmp_path: Path) -> None:
    w, wx, ali = start_fuzzed_worker(tmp_path)
    try:
        result = asyncio.run(run_fuzz(w, wx, ali, seed=SEED, requests=REQUESTS))
        print(result.table())
        assert result.requests == REQUESTS
        assert result.five_xx == 0, result.problems[:5]
        assert not result.problems, "\n".join(result.problems[:10])
        assert len(result.accepted) > REQUESTS // 20, "the fuzz must also send payments that are accepted"
        assert result.refused_callbacks > REQUESTS // 2
        settings = Settings.from_env()
        problems = check_after(w, result, settings.kafka_bootstrap, settings.redis_url)
        assert not problems, "\n".join(problems[:10])
    finally:
        w.kill()
        w.cleanup()
