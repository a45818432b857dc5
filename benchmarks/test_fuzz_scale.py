"""The black-box fuzz at full size (`scripts/bench fuzz --requests 100000`): the same seeded
requests and checks as tests/fuzz, counted by endpoint and status. Its figures go to
benchmarks/results/latest.json (`fuzz_requests`, `fuzz_5xx`, `fuzz_problems`) only when
every check ran, so that a fast wrong answer cannot pass."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from benchmarks.results import record
from streams.settings import Settings
from tests.fuzz.fuzzer import check_after, run_fuzz, start_fuzzed_worker

REQUESTS = int(os.environ.get("LOYALTY_FUZZ_REQUESTS", "100000"))
SEED = int(os.environ.get("LOYALTY_FUZZ_SEED", "20261129"))


def test_fuzz_at_scale(tmp_path: Path) -> None:
    w, wx, ali = start_fuzzed_worker(tmp_path)
    try:
        result = asyncio.run(run_fuzz(w, wx, ali, seed=SEED, requests=REQUESTS, progress=True))
        print(result.table())
        settings = Settings.from_env()
        after = check_after(w, result, settings.kafka_bootstrap, settings.redis_url)
        problems = result.problems + after
        for p in problems[:20]:
            print("PROBLEM:", p)
        rate = result.requests / result.seconds
        print(f"fuzz: {result.requests:,} requests in {result.seconds:.0f} s ({rate:,.0f}/s), "
              f"5xx {result.five_xx}, refused callbacks {result.refused_callbacks:,} (each dead-lettered: "
              f"{'yes' if not any('dead letters' in p for p in after) else 'NO'}), accepted payments "
              f"{len(result.accepted):,}, slowest answer {result.slowest_s * 1000:.0f} ms, problems {len(problems)}")
        record(fuzz_requests=result.requests, fuzz_5xx=result.five_xx, fuzz_problems=len(problems),
               fuzz_slowest_ms=round(result.slowest_s * 1000), fuzz_seed=SEED,
               fuzz_by_endpoint={f"{e} {s}": n for (e, s), n in sorted(result.by_endpoint.items())})
        assert not problems, problems[:5]
    finally:
        w.kill()
        w.cleanup()
